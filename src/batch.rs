//! Batches (`debit_many`, `record_usage_many`; SPEC sections 1 and 4), the pure part: the
//! checks of the arrays, the one order a batch locks its customers in, and how an item's
//! outcome becomes its row. The SQL functions are `ledger::batch` and `usage::batch`.
use crate::error::{BillingError, Result, INTERNAL, SERIALIZATION};

/// The most items one batch may carry.
pub const MAX_ITEMS: usize = 10_000;

/// The batch's item count: every array (name, length) has the same length, at most
/// `MAX_ITEMS`; 22023 otherwise, naming the arrays.
pub fn check_lengths(arrays: &[(&str, usize)]) -> Result<usize> {
    let Some(&(first, n)) = arrays.first() else { return Ok(0) };
    if let Some(&(other, m)) = arrays.iter().find(|a| a.1 != n) {
        return Err(BillingError::invalid(format!("the batch's arrays differ in length: {first} has {n} items, {other} has {m}")));
    }
    if n > MAX_ITEMS {
        return Err(BillingError::invalid(format!("a batch has at most {MAX_ITEMS} items, got {n}")));
    }
    Ok(n)
}

/// The customers a batch locks, in the one order every batch takes them: distinct, sorted
/// by bytes (ids are `COLLATE "C"`, and Rust compares `str` by bytes), each with its slot
/// count (its slot accounts are locked right after it, in slot order, as a gathering call
/// takes them: `store::lock_many`). Two batches sharing customers then wait for each other
/// at most, and never in a cycle.
pub fn lock_order<'a>(customers: impl IntoIterator<Item = (&'a str, i32)>) -> Vec<(&'a str, i32)> {
    let mut v: Vec<(&str, i32)> = customers.into_iter().collect();
    // Largest slot count first within one customer, so dedup keeps it (a count read twice
    // can only be the same one; the larger locks at least every account).
    v.sort_by(|a, b| a.0.cmp(b.0).then(b.1.cmp(&a.1)));
    v.dedup_by(|a, b| a.0 == b.0);
    v
}

/// The positions of the first item of each customer, in array order, skipping items
/// that name none (`None`: arguments refused, or not to be read ahead).
pub fn first_of_each<'a>(customers: impl IntoIterator<Item = Option<&'a str>>) -> Vec<usize> {
    let mut seen = std::collections::HashSet::new();
    customers.into_iter().enumerate().filter_map(|(j, c)| c.filter(|c| seen.insert(*c)).map(|_| j)).collect()
}

/// Whether an item's error ends the whole call rather than its row: a failure to
/// serialize (the transaction must be retried as a whole) or an internal error.
pub fn aborts_batch(e: &BillingError) -> bool {
    e.code == SERIALIZATION || e.code == INTERNAL
}

/// An item's outcome as the tail of its row: the answer, or `sqlstate` and `message`.
pub fn outcome<T>(r: Result<T>) -> (Option<T>, Option<String>, Option<String>) {
    match r {
        Ok(v) => (Some(v), None, None),
        Err(e) => (None, Some(e.code.to_string()), Some(e.message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_must_agree() {
        assert_eq!(check_lengths(&[("customers", 3), ("amounts", 3), ("idempotency_keys", 3)]), Ok(3));
        assert_eq!(check_lengths(&[("customers", 0), ("amounts", 0)]), Ok(0));
        let e = check_lengths(&[("customers", 3), ("amounts", 2), ("idempotency_keys", 3)]).unwrap_err();
        assert_eq!(e.code, "22023");
        assert!(e.message.contains("customers has 3") && e.message.contains("amounts has 2"), "{}", e.message);
        let e = check_lengths(&[("customers", 3), ("amounts", 3), ("idempotency_keys", 4)]).unwrap_err();
        assert!(e.message.contains("idempotency_keys has 4"), "{}", e.message);
    }

    #[test]
    fn at_most_ten_thousand_items() {
        assert_eq!(check_lengths(&[("a", MAX_ITEMS), ("b", MAX_ITEMS)]), Ok(10_000));
        let e = check_lengths(&[("a", MAX_ITEMS + 1), ("b", MAX_ITEMS + 1)]).unwrap_err();
        assert_eq!(e.code, "22023");
        assert!(e.message.contains("10000"), "{}", e.message);
    }

    #[test]
    fn lock_order_is_bytes_order_distinct() {
        // 'B' (0x42) < 'a' (0x61) < 'z' < 'é' (0xc3 ...) by bytes, unlike most locales
        let got = lock_order([("z", 1), ("a", 1), ("é", 1), ("B", 1), ("a", 1), ("z", 1)]);
        assert_eq!(got, vec![("B", 1), ("a", 1), ("z", 1), ("é", 1)]);
        // "a#1" (a slot-looking id) sorts after "a" and before "a0"... by bytes
        let got = lock_order([("a0", 1), ("a#1", 1), ("a", 4)]);
        assert_eq!(got, vec![("a", 4), ("a#1", 1), ("a0", 1)]);
    }

    #[test]
    fn lock_order_is_the_same_for_any_item_order() {
        let items = ["c7", "c1", "c3", "c1", "c9", "c3", "c2"];
        let fwd = lock_order(items.iter().map(|c| (*c, 1)));
        let rev = lock_order(items.iter().rev().map(|c| (*c, 1)));
        assert_eq!(fwd, rev);
        assert_eq!(fwd.iter().map(|c| c.0).collect::<Vec<_>>(), ["c1", "c2", "c3", "c7", "c9"]);
    }

    #[test]
    fn lock_order_keeps_the_larger_slot_count() {
        assert_eq!(lock_order([("x", 1), ("x", 4), ("x", 2)]), vec![("x", 4)]);
    }

    #[test]
    fn first_item_of_each_customer() {
        assert_eq!(first_of_each([Some("b"), Some("a"), Some("b"), None, Some("c"), Some("a")]), vec![0, 1, 4]);
        assert_eq!(first_of_each([None, Some("a"), Some("a")]), vec![1]);
        assert_eq!(first_of_each(Vec::<Option<&str>>::new()), Vec::<usize>::new());
    }

    #[test]
    fn which_errors_end_the_batch() {
        assert!(aborts_batch(&BillingError::new("40001", "slots changed")));
        assert!(aborts_batch(&BillingError::new("XX000", "internal")));
        for code in ["BL001", "BL002", "BL003", "BL004", "BL006", "22023", "22003"] {
            assert!(!aborts_batch(&BillingError::new(code, "item")), "{code}");
        }
    }

    #[test]
    fn outcome_splits_answer_and_error() {
        assert_eq!(outcome::<i64>(Ok(5)), (Some(5), None, None));
        let (v, s, m) = outcome::<i64>(Err(BillingError::new("BL001", "insufficient credits for customer \"c\"")));
        assert_eq!((v, s.as_deref(), m.as_deref()), (None, Some("BL001"), Some("insufficient credits for customer \"c\"")));
    }
}
