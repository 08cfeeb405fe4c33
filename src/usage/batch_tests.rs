//! `#[pg_test]`s of `billing.record_usage_many` (`usage::batch`): each item follows every
//! rule of `record_usage` (rating and carry, keys, access, rate limits), a refused item
//! answers in its row and leaves nothing behind, the arrays are checked as a whole.
#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    use crate::test_sql::{bal, clean, q, state};

    fn setup() {
        crate::test_sql::prepare("2030-01-01 00:00:00+00");
        Spi::run("SELECT billing.define_meter('tok', 3, 1000, '2029-01-01'); SELECT billing.define_meter('tok', 5, 1000, '2030-06-01')").unwrap();
    }

    /// The batch's rows as `i:credits:balance_after:replayed:sqlstate`.
    fn rows(call: &str) -> String {
        q(&format!("SELECT string_agg(format('%s:%s:%s:%s:%s', i, credits, balance_after, replayed, sqlstate), ' ') FROM (SELECT * FROM {call}) r"))
    }

    #[pg_test]
    fn usage_many_items_are_rated_carried_and_refused_in_their_rows() {
        setup();
        Spi::run("SELECT billing.grant('a', 10, 'g'); SELECT billing.grant('b', 100, 'g')").unwrap();
        // a: 500 tokens (1.5 credits: 1 now, .5 carried), 500 (2), 5000 (15: short), 1000 (3)
        let got = rows(
            "billing.record_usage_many(ARRAY['a','a','b','a','a','x','a'], ARRAY['tok','tok','tok','tok','tok','tok','nope'],
                                       ARRAY[500,500,1000,5000,1000,1,1]::bigint[], ARRAY['u1','u2','u1','u3','u4','u1','u5'])",
        );
        assert_eq!(got, "1:1:9:f: 2:2:7:f: 3:3:97:f: 4::::BL001 5:3:4:f: 6::::BL003 7::::BL003");
        assert_eq!((bal("a"), bal("b")), (4, 97));
        // the refused usage left no row and no carry change behind
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.usage_events WHERE customer = 'a'"), 3);
        assert_eq!(q::<i64>("SELECT credits FROM billing.usage('a', '2029-01-01', '2031-01-01')"), 6);
        let msg: String = q("SELECT message FROM billing.record_usage_many(ARRAY['a'], ARRAY['tok'], ARRAY[100000]::bigint[], ARRAY['u9'])");
        assert!(msg.contains("customer \"a\""), "{msg}");
        // occurred_at rates at the price then in force
        assert_eq!(
            rows("billing.record_usage_many(ARRAY['b'], ARRAY['tok'], ARRAY[1000]::bigint[], ARRAY['late'], ARRAY['2030-07-01'::timestamptz])"),
            "1:5:92:f:"
        );
        clean();
    }

    #[pg_test]
    fn usage_many_keys_replay_and_refuse_as_record_usage() {
        setup();
        Spi::run("SELECT billing.grant('a', 100, 'g')").unwrap();
        let first: pgrx::Uuid = q("SELECT entry_id FROM billing.record_usage('a', 'tok', 1000, 'u1')");
        let got = rows(
            "billing.record_usage_many(ARRAY['a','a','a','a','a'], ARRAY['tok','tok','tok','tok','tok'],
                                       ARRAY[1000,2000,2000,999,1]::bigint[], ARRAY['u1','u2','u2','u2','g'])",
        );
        assert_eq!(got, "1:3:97:t: 2:6:91:f: 3:6:91:t: 4::::BL002 5::::BL002");
        let again: pgrx::Uuid = q("SELECT entry_id FROM billing.record_usage_many(ARRAY['a'], ARRAY['tok'], ARRAY[1000]::bigint[], ARRAY['u1'])");
        assert_eq!(again, first);
        assert_eq!(bal("a"), 91);
        clean();
    }

    #[pg_test]
    fn usage_many_frozen_and_invalid_items() {
        setup();
        Spi::run("SELECT billing.grant('a', 100, 'g'); SELECT billing.grant('f', 100, 'g'); SELECT billing.set_frozen('f')").unwrap();
        let got = rows(
            "billing.record_usage_many(ARRAY['f','a','a','a',NULL,'a'], ARRAY['tok','tok',NULL,'tok','tok','tok'],
                                       ARRAY[1000,1000,1,0,1,1]::bigint[], ARRAY['k','k1','k2','k3','k4',''])",
        );
        assert_eq!(got, "1::::BL004 2:3:97:f: 3::::22023 4::::22023 5::::22023 6::::22023");
        assert_eq!((bal("a"), bal("f")), (97, 100));
        clean();
    }

    /// One token per item from the customer's limit; a refused item (short of credits)
    /// takes none, so the two after it still fit a limit of two.
    #[pg_test]
    fn usage_many_rate_limits_take_a_token_per_charged_item() {
        setup();
        Spi::run("SELECT billing.grant('r', 10, 'g'); SELECT billing.define_limit('r', '', 2, '1 minute')").unwrap();
        let got = rows(
            "billing.record_usage_many(ARRAY['r','r','r','r'], ARRAY['tok','tok','tok','tok'],
                                       ARRAY[100000,1000,1000,1000]::bigint[], ARRAY['big','u1','u2','u3'])",
        );
        assert_eq!(got, "1::::BL001 2:3:7:f: 3:3:4:f: 4::::BL006");
        let msg: String = q("SELECT message FROM billing.record_usage_many(ARRAY['r'], ARRAY['tok'], ARRAY[1]::bigint[], ARRAY['u4'])");
        assert!(msg.contains("rate limit") && msg.contains("\"r\""), "{msg}");
        assert_eq!(bal("r"), 4);
        clean();
    }

    #[pg_test]
    fn usage_many_arrays_are_checked_as_a_whole() {
        setup();
        Spi::run("SELECT billing.grant('a', 100, 'g')").unwrap();
        let call = |c: &str, m: &str, n: &str, k: &str, at: &str| {
            state(&format!("SELECT * FROM billing.record_usage_many({c}, {m}, {n}::bigint[], {k}, {at})"))
        };
        assert_eq!(call("ARRAY['a']", "ARRAY['tok','tok']", "ARRAY[1]", "ARRAY['k']", "NULL"), "22023");
        assert_eq!(call("ARRAY['a']", "ARRAY['tok']", "ARRAY[1,1]", "ARRAY['k']", "NULL"), "22023");
        assert_eq!(call("ARRAY['a']", "ARRAY['tok']", "ARRAY[1]", "ARRAY['k','l']", "NULL"), "22023");
        assert_eq!(call("ARRAY['a']", "ARRAY['tok']", "ARRAY[1]", "ARRAY['k']", "ARRAY[now(), now()]"), "22023");
        assert_eq!(call("NULL", "ARRAY['tok']", "ARRAY[1]", "ARRAY['k']", "NULL"), "22023");
        assert_eq!(
            call(
                "array_fill('a'::text, ARRAY[10001])",
                "array_fill('tok'::text, ARRAY[10001])",
                "array_fill(1, ARRAY[10001])",
                "ARRAY(SELECT 'k' || g FROM generate_series(1, 10001) g)",
                "NULL"
            ),
            "22023"
        );
        assert_eq!(call("ARRAY['a']", "ARRAY['tok']", "ARRAY[1000]", "ARRAY['k']", "ARRAY[NULL::timestamptz]"), "ok");
        assert_eq!(bal("a"), 97);
        clean();
    }

    #[pg_test]
    fn usage_many_the_callers_rollback_undoes_every_item() {
        setup();
        Spi::run("SELECT billing.grant('a', 100, 'g')").unwrap();
        let s = state(
            "DO $$ BEGIN PERFORM * FROM billing.record_usage_many(ARRAY['a','a'], ARRAY['tok','tok'], ARRAY[1000,1500]::bigint[], ARRAY['k1','k2']);
                         RAISE EXCEPTION 'caller gives up' USING ERRCODE = 'P0001'; END $$",
        );
        assert_eq!(s, "P0001");
        assert_eq!(bal("a"), 100);
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.usage_events"), 0);
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.usage_carry"), 0);
        clean();
    }
}
