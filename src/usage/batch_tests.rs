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

    /// The batch's debits leave their last writes to one statement (`ledger::deferred`);
    /// the ledger and the usage rows it leaves are the ones the same usages leave one
    /// call at a time: twin customers `x*` and `y*`, compared row by row.
    #[pg_test]
    fn usage_many_leaves_what_single_usages_leave() {
        setup();
        for p in ["x", "y"] {
            Spi::run(&format!(
                "SELECT billing.grant('{p}1', 100, 'g');
                 SELECT billing.grant('{p}2', 2, 'g1'); SELECT billing.grant('{p}2', 50, 'g2');
                 SELECT billing.grant('{p}3', 4, 'g'); SELECT billing.set_low_balance('{p}3', 2)"
            ))
            .unwrap();
        }
        // (customer, tokens, key): carries, a draw over two grants, a threshold, a short
        // usage, a replay, and customers coming back
        let items = [
            ("1", 500, "a"),
            ("2", 1500, "a"),
            ("3", 1000, "a"),
            ("1", 500, "b"),
            ("3", 5000, "b"),
            ("2", 1000, "b"),
            ("1", 500, "a"),
            ("1", 2000, "c"),
        ];
        let arr = |f: &dyn Fn(&(&str, i64, &str)) -> String| items.iter().map(f).collect::<Vec<_>>().join(",");
        let batch = rows(&format!(
            "billing.record_usage_many(ARRAY[{}], array_fill('tok'::text, ARRAY[{}]), ARRAY[{}]::bigint[], ARRAY[{}])",
            arr(&|i| format!("'x{}'", i.0)),
            items.len(),
            arr(&|i| i.1.to_string()),
            arr(&|i| format!("'{}'", i.2))
        ));
        Spi::run("CREATE TEMP TABLE single (i int, r text)").unwrap();
        for (j, (c, tokens, key)) in items.iter().enumerate() {
            let j = j + 1;
            Spi::run(&format!(
                "DO $$ BEGIN
                     INSERT INTO single SELECT {j}, format('%s:%s:%s:%s:', {j}, credits, balance_after, replayed)
                       FROM billing.record_usage('y{c}', 'tok', {tokens}, '{key}');
                 EXCEPTION WHEN others THEN INSERT INTO single VALUES ({j}, format('%s::::%s', {j}, SQLSTATE));
                 END $$"
            ))
            .unwrap();
        }
        assert_eq!(batch, q::<String>("SELECT string_agg(r, ' ' ORDER BY i) FROM single"));
        assert_eq!(batch, "1:1:99:f: 2:4:48:f: 3:3:1:f: 4:2:97:f: 5::::BL001 6:3:45:f: 7:1:99:t: 8:6:91:f:");
        let same = |sql: &str| {
            let of = |p: &str| q::<String>(&sql.replace("{p}", p));
            assert_eq!(of("x"), of("y"), "{sql}");
        };
        same(
            "SELECT string_agg(format('%s/%s/%s/%s/%s/%s', substr(customer, 2), seq, kind, amount, balance_after, cardinality(accounts)), ' '
                               ORDER BY customer, seq) FROM billing.journal WHERE customer LIKE '{p}%'",
        );
        same(
            "SELECT string_agg(format('%s/%s/%s/%s/%s/%s', substr(c.customer, 2), balance, c.seq, next_event_at, low_notified,
                                      draw || '/' || coalesce(draw_left::text, '-')), ' ' ORDER BY c.customer)
               FROM billing.customers c WHERE c.customer LIKE '{p}%'",
        );
        same("SELECT string_agg(format('%s/%s/%s', substr(customer, 2), seq, remaining), ' ' ORDER BY customer, seq) FROM billing.grants WHERE customer LIKE '{p}%'");
        same(
            "SELECT string_agg(format('%s/%s/%s/%s', substr(customer, 2), idempotency_key, quantity, credits), ' ' ORDER BY customer, idempotency_key)
               FROM billing.usage_events WHERE customer LIKE '{p}%'",
        );
        same("SELECT string_agg(format('%s/%s/%s', substr(customer, 2), num, den), ' ' ORDER BY customer) FROM billing.usage_carry WHERE customer LIKE '{p}%'");
        same("SELECT count(*)::text FROM billing.outbox WHERE customer LIKE '{p}%' AND kind = 'low_balance'");
        clean();
    }
}
