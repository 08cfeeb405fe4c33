//! `#[pg_test]`s of located entry ids (`entry_id.rs`): what the journal gets, how refund
//! and replays find entries by id, and what verify() says when an id lies.
#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    use crate::test_sql::{bal, clean, q, state};

    fn setup() {
        crate::test_sql::prepare("2030-01-01 00:00:00+00");
    }

    const LOCATED: &str = "'ff000000-0000-0000-0000-000000000000'::uuid";

    /// The entry id under key `k` of customer `c`.
    fn entry(c: &str, k: &str) -> pgrx::Uuid {
        q(&format!("SELECT entry_id FROM billing.journal WHERE customer = '{c}' AND idempotency_key = '{k}'"))
    }

    #[pg_test]
    fn entries_name_their_account_and_seq() {
        setup();
        q::<pgrx::Uuid>("SELECT billing.grant('ea', 100, 'g')");
        q::<pgrx::Uuid>("SELECT billing.grant('eb', 100, 'g')");
        for i in 0..3 {
            q::<i64>(&format!("SELECT balance_after FROM billing.debit('ea', 1, 'd{i}')"));
        }
        let r = q::<pgrx::Uuid>("SELECT billing.reserve('ea', 5, 'r')");
        q::<i64>(&format!("SELECT balance_after FROM billing.settle('{r}', 2)"));
        // Every entry of a and b, grants included, carries its account's number and seq,
        // exactly as the Rust layout (entry_id::located) and verify()'s SQL decode it.
        let n: i64 = q("SELECT count(*) FROM billing.journal WHERE customer IN ('ea', 'eb')");
        let located: i64 = q(&format!(
            "SELECT count(*) FROM billing.journal j JOIN billing.customers c USING (customer)
              WHERE j.entry_id >= {LOCATED}
                AND ('x' || substr(replace(j.entry_id::text, '-', ''), 3, 10))::bit(40)::bigint = c.num
                AND ('x' || substr(replace(j.entry_id::text, '-', ''), 18, 10))::bit(40)::bigint = j.seq
                AND substr(j.entry_id::text, 15, 1) = '8'"
        ));
        assert_eq!((n, located), (7, 7));
        let nums: i64 = q("SELECT count(DISTINCT num) FROM billing.customers WHERE customer IN ('ea', 'eb')");
        assert_eq!(nums, 2);
        // None of them went into the index of random ids.
        let indexed: i64 = q(&format!("SELECT count(*) FROM billing.journal WHERE customer IN ('ea', 'eb') AND entry_id < {LOCATED}"));
        assert_eq!(indexed, 0);
        clean();
    }

    #[pg_test]
    fn refund_and_replay_find_entries_by_id() {
        setup();
        q::<pgrx::Uuid>("SELECT billing.grant('ra', 100, 'g')");
        q::<i64>("SELECT balance_after FROM billing.debit('ra', 30, 'd')");
        let d = entry("ra", "d");
        let (f, b1, r1) = Spi::get_three::<pgrx::Uuid, i64, bool>(&format!("SELECT * FROM billing.refund('{d}', 10, 'rf')")).unwrap();
        let (f2, b2, r2) = Spi::get_three::<pgrx::Uuid, i64, bool>(&format!("SELECT * FROM billing.refund('{d}', 10, 'rf')")).unwrap();
        assert_eq!((b1, r1), (Some(80), Some(false)));
        assert_eq!((f2, b2, r2), (f, Some(80), Some(true)));
        assert_eq!(bal("ra"), 80);
        // An id that names a real account and seq but is not that entry's: unknown.
        let forged: String =
            q(&format!("SELECT overlay('{d}'::text placing CASE WHEN right('{d}', 4) = '0000' THEN '1111' ELSE '0000' END from 33)"));
        assert_eq!(state(&format!("SELECT billing.refund('{forged}')")), "BL003");
        // An id naming no account at all: unknown, without scanning anything.
        assert_eq!(state("SELECT billing.refund('ff0000ff-ff00-8000-8000-0000000fffff'::uuid)"), "BL003");
        assert_eq!(state("SELECT billing.refund('ffffffff-ffff-8fff-bfff-ffffffffffff')"), "BL003");
        // billing.entry() finds what the journal has under the id, and nothing for the others.
        assert_eq!(q::<i64>(&format!("SELECT count(*) FROM billing.entry('{d}') WHERE idempotency_key = 'd'")), 1);
        assert_eq!(q::<i64>(&format!("SELECT count(*) FROM billing.entry('{forged}')")), 0);
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.entry('ffffffff-ffff-8fff-bfff-ffffffffffff')"), 0);
        // The grant's entry is found too, and refused for what it is.
        let g = entry("ra", "g");
        assert_eq!(state(&format!("SELECT billing.refund('{g}')")), "22023");
        clean();
    }

    #[pg_test]
    fn random_ids_are_still_found() {
        setup();
        // An account number beyond the layout's 40 bits (set before its first entry): its
        // entries get random (version 7) ids, which the partial index finds.
        Spi::run("SELECT * FROM billing.link_customer('xa', 'cus_xa')").unwrap();
        Spi::run("UPDATE billing.customers SET num = 1099511627776 WHERE customer = 'xa'").unwrap();
        q::<pgrx::Uuid>("SELECT billing.grant('xa', 100, 'g')");
        q::<i64>("SELECT balance_after FROM billing.debit('xa', 30, 'd')");
        let d = entry("xa", "d");
        assert!(q::<bool>(&format!("SELECT '{d}'::uuid < {LOCATED} AND substr('{d}', 15, 1) = '7'")));
        assert!(q::<bool>(&format!("SELECT count(*) = 1 FROM billing.journal WHERE entry_id = '{d}' AND entry_id < {LOCATED}")));
        assert_eq!(q::<i64>(&format!("SELECT count(*) FROM billing.entry('{d}') WHERE kind = 'debit'")), 1);
        let (_, b, r) = Spi::get_three::<pgrx::Uuid, i64, bool>(&format!("SELECT * FROM billing.refund('{d}')")).unwrap();
        assert_eq!((b, r), (Some(100), Some(false)));
        let (_, b, r) = Spi::get_three::<pgrx::Uuid, i64, bool>(&format!("SELECT * FROM billing.refund('{d}')")).unwrap();
        assert_eq!((b, r), (Some(100), Some(true)));
        clean();
    }

    #[pg_test]
    fn verify_reports_ids_that_lie() {
        setup();
        q::<pgrx::Uuid>("SELECT billing.grant('va', 100, 'g')");
        q::<pgrx::Uuid>("SELECT billing.grant('vb', 100, 'g')");
        q::<i64>("SELECT balance_after FROM billing.debit('va', 30, 'd')");
        clean();
        // Two accounts with one number: both reported, and their ids no longer match.
        Spi::run("UPDATE billing.customers SET num = (SELECT num FROM billing.customers WHERE customer = 'va') WHERE customer = 'vb'").unwrap();
        let checks: String = q("SELECT string_agg(DISTINCT check_name, ',' ORDER BY check_name) FROM billing.verify()");
        assert_eq!(checks, "account_number,entry_id");
        let wrong: i64 = q("SELECT count(*) FROM billing.verify() WHERE check_name = 'entry_id' AND customer = 'vb'");
        assert_eq!(wrong, 1);
    }
}
