//! `#[pg_test]`s of `direct`: its reads follow the indexes as they are now (made again,
//! or made so that they cannot be read directly, when the statements stand in).
#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::test_sql::{bal, clean, q, state};
    use pgrx::prelude::*;

    fn replayed(key: &str) -> (pgrx::Uuid, bool) {
        let e: pgrx::Uuid = q(&format!("SELECT entry_id FROM billing.debit('direct-a', 1, '{key}')"));
        (e, q(&format!("SELECT replayed FROM billing.debit('direct-a', 1, '{key}')")))
    }

    /// Whether the entry under `key` of customer direct-a is found, read directly (None: the
    /// index cannot be read so).
    fn read_key(key: &str) -> Option<bool> {
        use crate::pg::direct;
        direct::fetch(&[(&direct::JOURNAL_KEY, &[direct::text("direct-a"), direct::text(key)])]).map(|rows| rows[0].is_some())
    }

    /// Customer `direct-a`, its own: the indexes are made again under an exclusive lock on
    /// the journal, which must not wait while holding a customer lock another test wants.
    #[pg_test]
    fn direct_reads_follow_the_indexes() {
        crate::test_sql::prepare("2030-01-01 00:00:00+00");
        q::<pgrx::Uuid>("SELECT billing.grant('direct-a', 100, 'g')");
        let first: pgrx::Uuid = q("SELECT entry_id FROM billing.debit('direct-a', 1, 'k1')");
        assert_eq!(replayed("k1"), (first, true));
        // The key's index made again, as an update of the extension may: the oid this
        // backend kept is forgotten, and the new index read.
        Spi::run(
            "DROP INDEX billing.journal_idempotency_key;
             CREATE UNIQUE INDEX journal_idempotency_key ON billing.journal (customer, idempotency_key) WHERE idempotency_key IS NOT NULL",
        )
        .unwrap();
        assert_eq!(replayed("k1"), (first, true));
        assert_eq!(state("SELECT billing.debit('direct-a', 2, 'k1')"), "BL002");
        assert_eq!(read_key("k1"), Some(true));
        assert_eq!(read_key("nope"), Some(false));
        // An index that does not compare in "C" cannot be read with scan keys: the
        // statement stands in, with the same answers.
        Spi::run(
            "DROP INDEX billing.journal_idempotency_key;
             CREATE UNIQUE INDEX journal_idempotency_key ON billing.journal (customer, idempotency_key COLLATE \"POSIX\")
              WHERE idempotency_key IS NOT NULL",
        )
        .unwrap();
        assert_eq!(replayed("k1"), (first, true));
        assert_eq!(state("SELECT billing.debit('direct-a', 2, 'k1')"), "BL002");
        assert!(read_key("k1").is_none(), "read directly through a POSIX index");
        let (second, again) = replayed("k2");
        assert!(again && second != first);
        assert_eq!(bal("direct-a"), 98);
        clean();
    }

    /// A price's plan, by the price's index and by the statement that stands in where the
    /// index cannot be read directly: the same answers. (No index made again here, unlike
    /// the test above: `plans` is read by many tests running at once.)
    #[pg_test]
    fn a_price_s_plan_by_its_index_or_its_statement() {
        use crate::webhook::apply::{plan_by_index, plan_by_statement};
        crate::test_sql::prepare("2030-01-01 00:00:00+00");
        Spi::run("SELECT billing.define_plan('direct-pro', '{chat}', 5000, '3 days', 'price_direct_pro')").unwrap();
        let pro = Some(("direct-pro".to_string(), 5000));
        assert_eq!(plan_by_index("price_direct_pro").unwrap(), Some(pro.clone()));
        assert_eq!(plan_by_index("price_direct_none").unwrap(), Some(None));
        Spi::connect_mut(|c| {
            assert_eq!(plan_by_statement(c, "price_direct_pro").unwrap(), pro);
            assert_eq!(plan_by_statement(c, "price_direct_none").unwrap(), None);
        });
        clean();
    }
}
