//! `#[pg_test]`s of the first grant kept on the customer row (`Op::take_from_head`,
//! sql/ledger.sql): debits it covers read no grant, and every change of the grants that
//! could make another one first clears it.
#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    use crate::test_sql::{bal, clean, clock, q};

    fn setup() {
        crate::test_sql::prepare("2030-01-01 00:00:00+00");
    }

    /// Index and sequential scans of billing.grants so far in this transaction.
    fn grant_reads() -> i64 {
        q("SELECT (coalesce(idx_scan, 0) + coalesce(seq_scan, 0))::bigint FROM pg_stat_xact_user_tables
            WHERE relid = 'billing.grants'::regclass")
    }

    fn head(c: &str) -> Option<i64> {
        Spi::get_one(&format!("SELECT draw_left FROM billing.customers WHERE customer = '{c}'")).unwrap()
    }

    fn left(c: &str, key: &str) -> i64 {
        q(&format!(
            "SELECT g.remaining FROM billing._grants_now g JOIN billing.journal j ON j.entry_id = g.entry_id
              WHERE g.customer = '{c}' AND j.idempotency_key = '{key}'"
        ))
    }

    #[pg_test]
    fn covered_debits_read_no_grant() {
        setup();
        q::<pgrx::Uuid>("SELECT billing.grant('ha', 100, 'g1', 'p', '2030-06-01')");
        q::<pgrx::Uuid>("SELECT billing.grant('ha', 100, 'g2')");
        assert_eq!(head("ha"), None, "a grant leaves the first grant unknown");
        q::<i64>("SELECT balance_after FROM billing.debit('ha', 10, 'd1')");
        assert_eq!(head("ha"), Some(90));
        let before = grant_reads();
        for i in 2..6 {
            q::<i64>(&format!("SELECT balance_after FROM billing.debit('ha', 10, 'd{i}')"));
        }
        let r = q::<pgrx::Uuid>("SELECT billing.reserve('ha', 5, 'r1')");
        assert_eq!(grant_reads(), before, "debits and a reserve the first grant covers read no grant");
        assert_eq!(head("ha"), Some(45));
        // A settle returns the unused part to the same grant: it stays first, and neither
        // the settle nor a release of a hold it covered reads a grant.
        q::<i64>(&format!("SELECT balance_after FROM billing.settle('{r}', 2)"));
        assert_eq!(head("ha"), Some(48));
        assert_eq!(grant_reads(), before, "the settle read no grant");
        let r2 = q::<pgrx::Uuid>("SELECT billing.reserve('ha', 8, 'r2')");
        assert_eq!(grant_reads(), before, "the reserve read no grant");
        q::<i64>(&format!("SELECT balance_after FROM billing.release('{r2}')"));
        assert_eq!(grant_reads(), before, "a settle and a release onto the first grant read no grant");
        assert_eq!(head("ha"), Some(48));
        // A debit beyond it reads the grants and takes the rest from the next one.
        assert_eq!(q::<i64>("SELECT balance_after FROM billing.debit('ha', 60, 'd6')"), 88);
        assert_eq!((left("ha", "g1"), left("ha", "g2")), (0, 88));
        assert_eq!(head("ha"), Some(88), "it read every grant: the next one is known first");
        q::<i64>("SELECT balance_after FROM billing.debit('ha', 8, 'd7')");
        assert_eq!(head("ha"), Some(80));
        assert_eq!(bal("ha"), 80);
        clean();
    }

    #[pg_test]
    fn a_grant_that_comes_first_is_spent_first() {
        setup();
        q::<pgrx::Uuid>("SELECT billing.grant('hb', 100, 'never')");
        q::<i64>("SELECT balance_after FROM billing.debit('hb', 10, 'd1')");
        assert_eq!(head("hb"), Some(90));
        // Soonest expiry comes first: the next debit must take from it, not the kept one.
        q::<pgrx::Uuid>("SELECT billing.grant('hb', 50, 'soon', 'p', '2030-02-01')");
        assert_eq!(head("hb"), None);
        q::<i64>("SELECT balance_after FROM billing.debit('hb', 20, 'd2')");
        assert_eq!((left("hb", "soon"), left("hb", "never")), (30, 90));
        assert_eq!(head("hb"), Some(30));
        // A refund onto another grant than the first clears it; the next spend reads.
        let d1: pgrx::Uuid = q("SELECT entry_id FROM billing.journal WHERE customer = 'hb' AND idempotency_key = 'd1'");
        q::<i64>(&format!("SELECT balance_after FROM billing.refund('{d1}')"));
        assert_eq!(head("hb"), None);
        assert_eq!((left("hb", "soon"), left("hb", "never")), (30, 100));
        q::<i64>("SELECT balance_after FROM billing.debit('hb', 5, 'd3')");
        assert_eq!((left("hb", "soon"), left("hb", "never")), (25, 100));
        clean();
        // Once the first grant expires, the kept one is not used: the debit catches up
        // (writes the expiry) and takes from what is left.
        clock("2030-03-01 00:00:00+00");
        assert_eq!(q::<i64>("SELECT balance_after FROM billing.debit('hb', 5, 'd4')"), 95);
        assert_eq!((left("hb", "soon"), left("hb", "never")), (0, 95));
        assert_eq!(head("hb"), Some(95));
        clean();
    }

    #[pg_test]
    fn overdraft_and_debt_paths_still_decide() {
        setup();
        q::<pgrx::Uuid>("SELECT billing.grant('hc', 10, 'g')");
        q::<i64>("SELECT balance_after FROM billing.debit('hc', 4, 'd1')");
        assert_eq!(head("hc"), Some(6));
        Spi::run("SELECT billing.set_overdraft('hc', 10)").unwrap();
        // More than the first grant holds: read, take 6 from it and 4 as debt.
        assert_eq!(q::<i64>("SELECT balance_after FROM billing.debit('hc', 10, 'd2')"), -4);
        assert_eq!(head("hc"), None);
        // A new grant repays the debt first, and becomes the first grant with credits.
        q::<pgrx::Uuid>("SELECT billing.grant('hc', 10, 'g2')");
        assert_eq!(q::<i64>("SELECT balance_after FROM billing.debit('hc', 1, 'd3')"), 5);
        assert_eq!(head("hc"), Some(5));
        clean();
    }
}
