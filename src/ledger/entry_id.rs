//! Journal entry ids that say where their entry is (0.6.0).
//!
//! `refund(entry_id)` is the only call that finds an entry by its id alone. Until 0.5.0 a
//! unique B-tree over every entry id served it, and every debit paid one more index insert
//! for it (a WAL record of ~75 bytes, a leaf page dirtied). An entry id now names its
//! account and its place in that account's journal: the customer row's `num` and the
//! entry's `seq`, so the lookup goes customer (by `num`) then journal (by its primary key)
//! and needs no index of its own. Ids made before the entry's seq is known (a
//! transfer pair's), ids of numbers or seqs beyond 40 bits and every id from before 0.6.0 are random (version 7) and stay in
//! a partial index of the ids below [`LOCATED_FROM`].
//!
//! Layout, as a 128-bit big-endian number: `0xff` (8 bits: above every version-7 id
//! until the year 10889), the account number (40), the version `8` (4), random (12), the
//! RFC 9562 variant `0b10` (2), random (2), the seq (40), random (20). The 34 random bits
//! keep ids of two databases apart; uniqueness within one comes from (num, seq).

/// The smallest located id; the partial index `journal_entry_id` holds the ids below it.
pub const LOCATED_FROM: &str = "ff000000-0000-0000-0000-000000000000";

const FIELD: i64 = (1 << 40) - 1;

/// The id of entry `seq` of account `num`, or `None` when either does not fit in 40 bits
/// (the caller then makes a random id, found through the index).
pub fn located(num: i64, seq: i64, random: [u8; 5]) -> Option<[u8; 16]> {
    if !(1..=FIELD).contains(&num) || !(1..=FIELD).contains(&seq) {
        return None;
    }
    let r = u64::from_be_bytes([0, 0, 0, random[0], random[1], random[2], random[3], random[4]]);
    let (r12, r2, r20) = ((r >> 22) & 0xfff, (r >> 20) & 0x3, r & 0xf_ffff);
    let v: u128 = (0xffu128 << 120)
        | ((num as u128) << 80)
        | (0x8u128 << 76)
        | ((r12 as u128) << 64)
        | (0b10u128 << 62)
        | ((r2 as u128) << 60)
        | ((seq as u128) << 20)
        | r20 as u128;
    Some(v.to_be_bytes())
}

/// The (account number, seq) a located id names, or `None` for any other id.
pub fn locate(id: &[u8; 16]) -> Option<(i64, i64)> {
    let v = u128::from_be_bytes(*id);
    if v >> 120 != 0xff || (v >> 76) & 0xf != 0x8 || (v >> 62) & 0x3 != 0b10 {
        return None;
    }
    let num = ((v >> 80) as i64) & FIELD;
    let seq = ((v >> 20) as i64) & FIELD;
    (num >= 1 && seq >= 1).then_some((num, seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(id: &[u8; 16]) -> String {
        id.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn round_trips_and_is_a_version_8_uuid() {
        for &(num, seq) in &[(1, 1), (2, 3), (12_345, 67_890), (FIELD, FIELD), (1 << 39, 1 << 20)] {
            for r in [[0u8; 5], [0xff; 5], [1, 2, 3, 4, 5]] {
                let id = located(num, seq, r).unwrap();
                assert_eq!(locate(&id), Some((num, seq)));
                let h = hex(&id);
                assert_eq!(&h[..2], "ff");
                assert_eq!(&h[12..13], "8", "version nibble of {h}");
                assert!(matches!(&h[16..17], "8" | "9" | "a" | "b"), "variant of {h}");
                // What verify() compares in SQL: num and seq as 10 hex digits each.
                assert_eq!(&h[2..12], format!("{num:010x}"));
                assert_eq!(&h[17..27], format!("{seq:010x}"));
            }
        }
    }

    #[test]
    fn random_bits_change_the_id_not_the_place() {
        let a = located(7, 9, [0; 5]).unwrap();
        let b = located(7, 9, [0xff; 5]).unwrap();
        assert_ne!(a, b);
        assert_eq!(locate(&a), locate(&b));
        // 34 random bits: every bit of the 5 bytes but the top 6 shows in the id.
        let ids: std::collections::HashSet<[u8; 16]> =
            (0..34).map(|i| located(7, 9, (1u64 << i).to_be_bytes()[3..].try_into().unwrap()).unwrap()).collect();
        assert_eq!(ids.len(), 34);
    }

    #[test]
    fn out_of_range_gives_none() {
        assert_eq!(located(0, 1, [0; 5]), None);
        assert_eq!(located(1, 0, [0; 5]), None);
        assert_eq!(located(-1, 1, [0; 5]), None);
        assert_eq!(located(FIELD + 1, 1, [0; 5]), None);
        assert_eq!(located(1, FIELD + 1, [0; 5]), None);
    }

    #[test]
    fn other_ids_are_not_located() {
        // A version-7 id (what new_id makes), the nil uuid, and ff-prefixed ids with a
        // wrong version or variant.
        let v7 = u128::from_str_radix("019ad5f3c2a07b3e8f1234567890abcd", 16).unwrap().to_be_bytes();
        assert_eq!(locate(&v7), None);
        assert_eq!(locate(&[0u8; 16]), None);
        let good = u128::from_be_bytes(located(5, 6, [0; 5]).unwrap());
        assert_eq!(locate(&(good ^ (0x1u128 << 76)).to_be_bytes()), None);
        assert_eq!(locate(&(good ^ (0x1u128 << 63)).to_be_bytes()), None);
        // Every located id sorts at or above LOCATED_FROM, every v7 id below it.
        let from = u128::from_str_radix(&LOCATED_FROM.replace('-', ""), 16).unwrap();
        assert!(good >= from && u128::from_be_bytes(v7) < from);
    }
}
