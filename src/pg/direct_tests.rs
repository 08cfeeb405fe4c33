//! `#[pg_test]`s of `direct`: its reads follow the indexes as they are now (made again,
//! or made so that they cannot be read directly, when the statements stand in).
#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::test_sql::{bal, clean, q, state};
    use pgrx::prelude::*;

    fn replayed(key: &str) -> (pgrx::Uuid, bool) {
        let e: pgrx::Uuid = q(&format!("SELECT entry_id FROM billing.debit('a', 1, '{key}')"));
        (e, q(&format!("SELECT replayed FROM billing.debit('a', 1, '{key}')")))
    }

    /// Whether the entry under `key` of customer a is found, read directly (None: the
    /// index cannot be read so).
    fn read_key(key: &str) -> Option<bool> {
        use crate::pg::direct;
        direct::fetch(&[(&direct::JOURNAL_KEY, &[direct::text("a"), direct::text(key)])]).map(|rows| rows[0].is_some())
    }

    #[pg_test]
    fn direct_reads_follow_the_indexes() {
        crate::test_sql::prepare("2030-01-01 00:00:00+00");
        q::<pgrx::Uuid>("SELECT billing.grant('a', 100, 'g')");
        let first: pgrx::Uuid = q("SELECT entry_id FROM billing.debit('a', 1, 'k1')");
        assert_eq!(replayed("k1"), (first, true));
        // The key's index made again, as an update of the extension may: the oid this
        // backend kept is forgotten, and the new index read.
        Spi::run(
            "DROP INDEX billing.journal_idempotency_key;
             CREATE UNIQUE INDEX journal_idempotency_key ON billing.journal (customer, idempotency_key) WHERE idempotency_key IS NOT NULL",
        )
        .unwrap();
        assert_eq!(replayed("k1"), (first, true));
        assert_eq!(state("SELECT billing.debit('a', 2, 'k1')"), "BL002");
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
        assert_eq!(state("SELECT billing.debit('a', 2, 'k1')"), "BL002");
        assert!(read_key("k1").is_none(), "read directly through a POSIX index");
        let (second, again) = replayed("k2");
        assert!(again && second != first);
        assert_eq!(bal("a"), 98);
        clean();
    }

    /// A price's plan, by the price's index and, where that cannot be read directly, by
    /// the statement: the same answers.
    #[pg_test]
    fn a_price_s_plan_by_its_index_or_its_statement() {
        use crate::pg::direct;
        crate::test_sql::prepare("2030-01-01 00:00:00+00");
        Spi::run("SELECT billing.define_plan('pro', '{chat}', 5000, '3 days', 'price_pro')").unwrap();
        let plan_of = |price: &str| Spi::connect_mut(|c| crate::webhook::apply::plan_of(c, price)).unwrap();
        let by_index = || direct::fetch(&[(&direct::PLAN_PRICE, &[direct::text("price_pro")])]).map(|rows| rows[0].is_some());
        assert_eq!(by_index(), Some(true));
        assert_eq!(plan_of("price_pro"), Some(("pro".to_string(), 5000)));
        assert_eq!(plan_of("price_none"), None);
        Spi::run(
            "ALTER TABLE billing.plans DROP CONSTRAINT plans_provider_price_key;
             CREATE UNIQUE INDEX plans_provider_price_key ON billing.plans (provider_price COLLATE \"POSIX\")",
        )
        .unwrap();
        assert_eq!(by_index(), None, "read directly through a POSIX index");
        assert_eq!(plan_of("price_pro"), Some(("pro".to_string(), 5000)));
        assert_eq!(plan_of("price_none"), None);
        clean();
    }
}
