//! `#[pg_test]`s of `billing.debit_many` (`ledger::batch`): every item follows the single
//! debit's rules, a refused item answers in its row and leaves the others be, and the
//! arrays are checked as a whole.
#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    use crate::test_sql::{bal, clean, clock, q, state};

    fn setup() {
        crate::test_sql::prepare("2030-01-01 00:00:00+00");
    }

    /// The batch's rows as `i:balance_after:replayed:sqlstate`, in the order they came.
    fn rows(call: &str) -> String {
        q(&format!("SELECT string_agg(format('%s:%s:%s:%s', i, balance_after, replayed, sqlstate), ' ') FROM (SELECT * FROM {call}) r"))
    }

    #[pg_test]
    fn debit_many_items_apply_in_array_order_and_refusals_stay_in_their_rows() {
        setup();
        Spi::run("SELECT billing.grant('a', 100, 'g'); SELECT billing.grant('b', 10, 'g')").unwrap();
        // a: 60 ok (40 left), 60 short (BL001), 40 ok (0 left); b in between
        let got = rows("billing.debit_many(ARRAY['a','b','a','a','b'], ARRAY[60,3,60,40,7], ARRAY['k1','k1','k2','k3','k2'])");
        assert_eq!(got, "1:40:f: 2:7:f: 3:::BL001 4:0:f: 5:0:f:");
        assert_eq!((bal("a"), bal("b")), (0, 0));
        // the refused item wrote nothing: a's journal has the grant and two debits
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.journal WHERE customer = 'a'"), 3);
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.journal WHERE customer = 'a' AND idempotency_key = 'k2'"), 0);
        let msg: String = q("SELECT message FROM billing.debit_many(ARRAY['a'], ARRAY[1], ARRAY['k9'])");
        assert!(msg.contains("customer \"a\""), "{msg}");
        clean();
    }

    #[pg_test]
    fn debit_many_entry_ids_are_the_journal_entries() {
        setup();
        Spi::run("SELECT billing.grant('a', 100, 'g')").unwrap();
        // (read in a later statement: the batch's own statement does not see its writes)
        Spi::run("CREATE TEMP TABLE d AS SELECT * FROM billing.debit_many(ARRAY['a','a'], ARRAY[1,2], ARRAY['x','y'])").unwrap();
        let n: i64 = q("SELECT count(*) FROM d JOIN billing.journal j
                           ON j.entry_id = d.entry_id AND j.kind = 'debit' AND j.amount = -(d.i::bigint) AND j.balance_after = d.balance_after");
        assert_eq!(n, 2);
        clean();
    }

    #[pg_test]
    fn debit_many_keys_replay_and_refuse_as_the_single_debit() {
        setup();
        Spi::run("SELECT billing.grant('a', 100, 'g')").unwrap();
        let first: pgrx::Uuid = q("SELECT entry_id FROM billing.debit('a', 5, 'd1')");
        // the key of an earlier debit with the same amount replays; within the batch too;
        // another amount under a used key is BL002; the grant's key is another operation's
        let got = rows("billing.debit_many(ARRAY['a','a','a','a','a'], ARRAY[5,7,7,8,1], ARRAY['d1','d2','d2','d2','g'])");
        assert_eq!(got, "1:95:t: 2:88:f: 3:88:t: 4:::BL002 5:::BL002");
        let replayed: pgrx::Uuid = q("SELECT entry_id FROM billing.debit_many(ARRAY['a'], ARRAY[5], ARRAY['d1'])");
        assert_eq!(replayed, first);
        let msg: String = q("SELECT message FROM billing.debit_many(ARRAY['a'], ARRAY[9], ARRAY['d2'])");
        assert!(msg.contains("\"d2\"") && msg.contains("\"a\""), "{msg}");
        assert_eq!(bal("a"), 88);
        // keys are per customer
        Spi::run("SELECT billing.grant('b', 10, 'g')").unwrap();
        assert_eq!(rows("billing.debit_many(ARRAY['b'], ARRAY[5], ARRAY['d1'])"), "1:5:f:");
        clean();
    }

    #[pg_test]
    fn debit_many_unknown_frozen_and_invalid_items() {
        setup();
        Spi::run("SELECT billing.grant('a', 100, 'g'); SELECT billing.grant('f', 100, 'g'); SELECT billing.set_frozen('f')").unwrap();
        let got = rows(
            "billing.debit_many(ARRAY['nobody','a','f','a','a',NULL,'a',''], ARRAY[1,1,1,0,-3,1,NULL,1],
                                ARRAY['k','k1','k','k2','k3','k','k5','k'])",
        );
        assert_eq!(got, "1:::BL003 2:99:f: 3:::BL004 4:::22023 5:::22023 6:::22023 7:::22023 8:::22023");
        let got = rows("billing.debit_many(ARRAY['a','a'], ARRAY[1,1], ARRAY[NULL, repeat('k', 256)])");
        assert_eq!(got, "1:::22023 2:::22023");
        let msg: String = q("SELECT message FROM billing.debit_many(ARRAY['nobody'], ARRAY[1], ARRAY['k'])");
        assert!(msg.contains("\"nobody\""), "{msg}");
        let msg: String = q("SELECT message FROM billing.debit_many(ARRAY['f'], ARRAY[1], ARRAY['k'])");
        assert!(msg.contains("\"f\"") && msg.contains("frozen"), "{msg}");
        assert_eq!((bal("a"), bal("f")), (99, 100));
        // a slot account named as a customer is refused as the single debit refuses it
        Spi::run("SELECT billing.set_slots('a', 2)").unwrap();
        assert_eq!(rows("billing.debit_many(ARRAY['a#1'], ARRAY[1], ARRAY['k'])"), "1:::22023");
        clean();
    }

    #[pg_test]
    fn debit_many_arrays_are_checked_as_a_whole() {
        setup();
        Spi::run("SELECT billing.grant('a', 20000, 'g')").unwrap();
        assert_eq!(state("SELECT * FROM billing.debit_many(ARRAY['a'], ARRAY[1,2], ARRAY['k'])"), "22023");
        assert_eq!(state("SELECT * FROM billing.debit_many(ARRAY['a','a'], ARRAY[1,2], ARRAY['k'])"), "22023");
        assert_eq!(state("SELECT * FROM billing.debit_many(NULL, ARRAY[1], ARRAY['k'])"), "22023");
        assert_eq!(state("SELECT * FROM billing.debit_many(ARRAY['a'], NULL, ARRAY['k'])"), "22023");
        assert_eq!(state("SELECT * FROM billing.debit_many(ARRAY['a'], ARRAY[1], NULL)"), "22023");
        let over = "SELECT * FROM billing.debit_many(array_fill('a'::text, ARRAY[10001]), array_fill(1::bigint, ARRAY[10001]),
                                                     ARRAY(SELECT 'k' || g FROM generate_series(1, 10001) g))";
        assert_eq!(state(over), "22023");
        assert_eq!(bal("a"), 20000);
        // 10,000 items is the most, and they all go through
        let ok: i64 = q("SELECT count(*) FILTER (WHERE sqlstate IS NULL) FROM billing.debit_many(array_fill('a'::text, ARRAY[10000]),
                           array_fill(1::bigint, ARRAY[10000]), ARRAY(SELECT 'k' || g FROM generate_series(1, 10000) g))");
        assert_eq!(ok, 10000);
        assert_eq!(bal("a"), 10000);
        // empty arrays: no rows
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.debit_many('{}', '{}', '{}')"), 0);
        clean();
    }

    /// The batch's changes are the caller's transaction's: a rollback (here of a
    /// subtransaction) takes every item back.
    #[pg_test]
    fn debit_many_the_callers_rollback_undoes_every_item() {
        setup();
        Spi::run("SELECT billing.grant('a', 100, 'g'); SELECT billing.grant('b', 100, 'g')").unwrap();
        let s = state(
            "DO $$ BEGIN PERFORM * FROM billing.debit_many(ARRAY['a','b'], ARRAY[10,20], ARRAY['k1','k2']);
                         RAISE EXCEPTION 'caller gives up' USING ERRCODE = 'P0001'; END $$",
        );
        assert_eq!(s, "P0001");
        assert_eq!((bal("a"), bal("b")), (100, 100));
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.journal WHERE kind = 'debit'"), 0);
        clean();
    }

    /// A refusal for want of credits after the attempt wrote down an expiry keeps the
    /// expiry (finished) and nothing else, so the customer's next item goes on from it.
    #[pg_test]
    fn debit_many_a_short_item_after_an_expiry_leaves_a_consistent_ledger() {
        setup();
        Spi::run("SELECT billing.grant('a', 50, 'g1', 'promo', '2030-01-02'); SELECT billing.grant('a', 30, 'g2')").unwrap();
        clock("2030-01-03 00:00:00+00");
        let got = rows("billing.debit_many(ARRAY['a','a','a'], ARRAY[40,20,20], ARRAY['k1','k2','k3'])");
        assert_eq!(got, "1:::BL001 2:10:f: 3:::BL001");
        assert_eq!(bal("a"), 10);
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.journal WHERE customer = 'a' AND kind = 'expiry'"), 1);
        clean();
    }

    /// A slotted customer's items are routed as its single debits are (its slots, and a
    /// gather when a slot is short); one refused after gathering leaves nothing behind.
    #[pg_test]
    fn debit_many_slotted_customers_are_routed_as_single_debits() {
        setup();
        Spi::run("SELECT billing.grant('s', 400, 'g'); SELECT billing.set_slots('s', 4)").unwrap();
        let keys: Vec<String> = (0..8).map(|i| format!("'k{i}'")).collect();
        let got: i64 = q(&format!(
            "SELECT count(*) FILTER (WHERE sqlstate IS NULL) FROM billing.debit_many(array_fill('s'::text, ARRAY[8]), array_fill(10::bigint, ARRAY[8]), ARRAY[{}])",
            keys.join(",")
        ));
        assert_eq!(got, 8);
        assert_eq!(bal("s"), 320);
        // too much for any slot and for all of them: BL001 after a gather, rolled back;
        // then one that needs a gather and fits
        let got: String = q("SELECT string_agg(coalesce(sqlstate, 'ok'), ' ' ORDER BY i) FROM billing.debit_many(ARRAY['s','s'], ARRAY[500, 300], ARRAY['big','gather'])");
        assert_eq!(got, "BL001 ok");
        assert_eq!(bal("s"), 20);
        // a replay goes to the same slot's entry
        assert!(q::<bool>("SELECT replayed FROM billing.debit_many(ARRAY['s'], ARRAY[10], ARRAY['k3'])"));
        assert_eq!(bal("s"), 20);
        clean();
    }

    /// A batch writes its items' last writes together (`deferred`); the ledger it leaves
    /// is the one the same debits leave one call at a time: twin customers `x*` and `y*`
    /// with the same grants, `x*` debited by one batch, `y*` by single calls in the same
    /// order, compared row by row (entry ids and grant ids aside). The cases: a draw from
    /// the first grant only, one that empties it, one over two grants (an entry of two
    /// lines, written at once), an expiry written down first, a crossed low-balance
    /// threshold, a refusal, a replay, and a customer's later items after its first.
    #[pg_test]
    fn debit_many_leaves_the_ledger_single_debits_leave() {
        setup();
        for p in ["x", "y"] {
            Spi::run(&format!(
                "SELECT billing.grant('{p}1', 100, 'g');
                 SELECT billing.grant('{p}2', 10, 'g1'); SELECT billing.grant('{p}2', 50, 'g2');
                 SELECT billing.grant('{p}3', 30, 'g1', 'promo', '2030-01-02'); SELECT billing.grant('{p}3', 40, 'g2');
                 SELECT billing.grant('{p}4', 20, 'g'); SELECT billing.set_low_balance('{p}4', 15);
                 SELECT billing.grant('{p}5', 5, 'g');
                 SELECT billing.grant('{p}6', 100, 'g')"
            ))
            .unwrap();
        }
        clock("2030-01-03 00:00:00+00");
        // (customer, amount, key): x1 a draw; x2 over two grants; x3 past an expiry;
        // x4 below its threshold; x5 short; x6 then x1 again, a replay of x1's key, x2 again
        let items = [
            ("1", 7, "a"),
            ("2", 15, "a"),
            ("3", 5, "a"),
            ("4", 10, "a"),
            ("5", 9, "a"),
            ("6", 100, "a"),
            ("1", 3, "b"),
            ("1", 7, "a"),
            ("2", 45, "b"),
        ];
        let arr = |f: &dyn Fn(&(&str, i64, &str)) -> String| items.iter().map(f).collect::<Vec<_>>().join(",");
        let batch = rows(&format!(
            "billing.debit_many(ARRAY[{}], ARRAY[{}], ARRAY[{}])",
            arr(&|i| format!("'x{}'", i.0)),
            arr(&|i| i.1.to_string()),
            arr(&|i| format!("'{}'", i.2))
        ));
        // the same, one call at a time (a refusal raises: caught in a subtransaction)
        Spi::run("CREATE TEMP TABLE single (i int, r text)").unwrap();
        for (j, (c, amount, key)) in items.iter().enumerate() {
            let j = j + 1;
            Spi::run(&format!(
                "DO $$ BEGIN
                     INSERT INTO single SELECT {j}, format('%s:%s:%s:', {j}, balance_after, replayed) FROM billing.debit('y{c}', {amount}, '{key}');
                 EXCEPTION WHEN others THEN INSERT INTO single VALUES ({j}, format('%s:::%s', {j}, SQLSTATE));
                 END $$"
            ))
            .unwrap();
        }
        assert_eq!(batch, q::<String>("SELECT string_agg(r, ' ' ORDER BY i) FROM single"));
        assert_eq!(batch, "1:93:f: 2:45:f: 3:35:f: 4:10:f: 5:::BL001 6:0:f: 7:90:f: 8:93:t: 9:0:f:");
        let journal = |p: &str| -> String {
            q(&format!(
                "SELECT string_agg(format('%s/%s/%s/%s/%s/%s/%s/%s', substr(customer, 2), seq, kind, amount, balance_after,
                                          idempotency_key, cardinality(accounts), (SELECT sum(d) FROM unnest(deltas) d)),
                                   ' ' ORDER BY customer, seq)
                   FROM billing.journal WHERE customer LIKE '{p}%'"
            ))
        };
        assert_eq!(journal("x"), journal("y"));
        let customers = |p: &str| -> String {
            q(&format!(
                "SELECT string_agg(format('%s/%s/%s/%s/%s/%s/%s/%s/%s', substr(c.customer, 2), balance, od, c.seq, last_at, next_event_at,
                                          low_notified, coalesce(g.source, '-') || coalesce(g.seq::text, ''), draw || '/' || coalesce(draw_left::text, '-')),
                                   ' ' ORDER BY c.customer)
                   FROM billing.customers c LEFT JOIN billing.grants g ON g.customer = c.customer AND g.id = c.draw_grant
                  WHERE c.customer LIKE '{p}%'"
            ))
        };
        assert_eq!(customers("x"), customers("y"));
        let grants = |p: &str| -> String {
            q(&format!(
                "SELECT string_agg(format('%s/%s/%s/%s', substr(customer, 2), seq, remaining, open), ' ' ORDER BY customer, seq)
                   FROM billing.grants WHERE customer LIKE '{p}%'"
            ))
        };
        assert_eq!(grants("x"), grants("y"));
        let outbox = |p: &str| -> i64 { q(&format!("SELECT count(*) FROM billing.outbox WHERE customer LIKE '{p}%' AND kind = 'low_balance'")) };
        assert_eq!((outbox("x"), outbox("y")), (1, 1));
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.verify()"), 0);
        clean();
    }
}
