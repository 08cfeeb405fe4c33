//! `#[pg_test]`s of the collation of billing's text columns (sql/*.sql; the 0.9.0 upgrade
//! makes the same): ids, keys, names and codes are `COLLATE "C"`, so in a database whose
//! collation is not C (en_US.UTF-8) an index descent compares them by bytes, as in a C
//! database, not through `strcoll`. Natural text keeps the database's collation. A new
//! text column must be one or the other: these tests name every exception.
#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    use crate::test_sql::q;

    /// The text columns of billing's tables that are natural text (bodies, messages), not
    /// ids or keys: compared by nobody, they keep the database's collation.
    const NATURAL: &[&str] = &["event_variants.body", "events.body", "events.detail", "inbox.body"];

    /// Every collatable column of billing's tables (text, text[], varchar, a domain over
    /// one...) is "C", but the natural text, which is the database's ("default").
    #[pg_test]
    fn ids_and_keys_are_collate_c() {
        let not_c: String = q(r#"
            SELECT coalesce(string_agg(c.relname || '.' || a.attname || ' ' || a.attcollation::regcollation::text, ', '
                                       ORDER BY c.relname, a.attname), '')
              FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
             WHERE c.relnamespace = 'billing'::regnamespace AND c.relkind IN ('r', 'p')
               AND a.attnum > 0 AND NOT a.attisdropped
               AND a.attcollation <> 0 AND a.attcollation <> 'pg_catalog."C"'::regcollation"#);
        let want: Vec<String> = NATURAL.iter().map(|c| format!("{c} \"default\"")).collect();
        assert_eq!(not_c, want.join(", "), "a text column that is an id, key, name or code must be COLLATE \"C\"; natural text is listed in NATURAL");
        // not vacuous: the ids and keys are there, and "C"
        let c: i64 = q(r#"
            SELECT count(*) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
             WHERE c.relnamespace = 'billing'::regnamespace AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
               AND a.attcollation = 'pg_catalog."C"'::regcollation
               AND (c.relname, a.attname) IN (('customers', 'customer'), ('journal', 'idempotency_key'), ('usage_events', 'idempotency_key'),
                                              ('events', 'event_id'), ('endpoints', 'name'), ('plans', 'features'), ('buckets', 'feature'))"#);
        assert_eq!(c, 7);
        // and so is every index key over text (an index with COLLATE "default" would bring strcoll back)
        let idx: String = q(r#"
            SELECT coalesce(string_agg(DISTINCT i.indexrelid::regclass::text, ', '), '')
              FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid, unnest(i.indcollation::oid[]) k(coll)
             WHERE c.relnamespace = 'billing'::regnamespace AND k.coll <> 0 AND k.coll <> 'pg_catalog."C"'::regcollation"#);
        assert_eq!(idx, "");
    }

    /// The generic plan (as SPI keeps them) of a statement whose parameters are text,
    /// run with 'a', '2', ...
    fn generic_plan(sql: &str) -> String {
        let n = sql.matches('$').count();
        Spi::run(&format!("PREPARE pg_temp_collation({}) AS {sql}", vec!["text"; n].join(", "))).unwrap();
        let args: Vec<String> = (0..n).map(|i| if i == 0 { "''a''".to_string() } else { format!("''{}''", i + 1) }).collect();
        let plan: String = q(&format!("SELECT pg_temp.plan('EXECUTE pg_temp_collation({})')", args.join(", ")));
        Spi::run("DEALLOCATE pg_temp_collation").unwrap();
        plan
    }

    /// A parameter (text, the default collation) compared with a "C" column takes the
    /// column's collation, so the lookups of the hot path keep their indexes: generic
    /// plans, as the kept SPI plans are, of the statements' shapes.
    #[pg_test]
    fn lookups_by_text_parameters_keep_their_indexes() {
        Spi::run("SET LOCAL enable_seqscan = off; SET LOCAL plan_cache_mode = force_generic_plan").unwrap();
        // Two indexes of usage_events lead with the customer; which one a generic plan of
        // the key's lookup takes depends on the statistics the (long-lived) test cluster
        // has gathered. Without the other one (in this rolled-back transaction) the
        // lookup is the key's index or none.
        Spi::run("DROP INDEX billing.usage_events_time").unwrap();
        Spi::run(
            "CREATE FUNCTION pg_temp.plan(q text) RETURNS text LANGUAGE plpgsql AS $$
             DECLARE r text; t text := ''; BEGIN
                 FOR r IN EXECUTE 'EXPLAIN (COSTS OFF) ' || q LOOP t := t || r || ' / '; END LOOP; RETURN t; END $$",
        )
        .unwrap();
        let lookups = [
            ("SELECT balance FROM billing.customers WHERE customer = $1", "customers_pkey"),
            ("SELECT seq FROM billing.journal WHERE customer = $1 AND idempotency_key = $2", "journal_idempotency_key"),
            ("SELECT credits FROM billing.usage_events WHERE customer = $1 AND idempotency_key = $2", "usage_events_pkey"),
            ("SELECT status FROM billing.events WHERE provider = $1 AND event_id = $2", "events_pkey"),
            ("SELECT tokens FROM billing.buckets WHERE customer = $1 AND feature = $2", "buckets_pkey"),
            ("SELECT num FROM billing.usage_carry WHERE customer = $1 AND meter = $2", "usage_carry_pkey"),
            ("SELECT customer FROM billing.provider_customers WHERE provider = $1 AND provider_customer = $2", "provider_customers_pkey"),
            ("SELECT status FROM billing.subscriptions WHERE provider = $1 AND subscription_id = $2", "subscriptions_provider_id"),
            ("SELECT id FROM billing.grants WHERE customer = $1 AND open ORDER BY expires_at, priority DESC, seq", "grants_spend_order"),
            ("SELECT provider FROM billing.endpoints WHERE name = $1", "endpoints_pkey"),
            // a slot account's name, made from the customer's
            ("SELECT balance FROM billing.customers WHERE customer = $1 || '#' || $2::int", "customers_pkey"),
        ];
        // the index is scanned (plain, index-only or bitmap) with the parameter as its condition
        let keyed = |plan: &str, index: &str| {
            (plan.contains(&format!("using {index} ")) || plan.contains(&format!("Bitmap Index Scan on {index} ")))
                && plan.split(" / ").any(|l| l.trim_start().starts_with("Index Cond:") && l.contains("$1"))
        };
        for (sql, index) in lookups {
            let plan = generic_plan(sql);
            assert!(keyed(&plan, index), "{sql}: {plan}");
        }
        // the check can fail: with the database's collation forced on the parameter, the
        // comparison is no longer the index's
        let plan = generic_plan("SELECT id FROM billing.grants WHERE customer = $1 COLLATE \"default\" AND open");
        assert!(!keyed(&plan, "grants_spend_order"), "{plan}");
    }
}
