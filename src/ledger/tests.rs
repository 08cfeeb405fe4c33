//! `#[pg_test]`s of every ledger function and its error paths. Each runs in a
//! transaction that is rolled back; concurrency, commits and roles are tested from the
//! client side (pgrx-tests/, tests/isolation/).
#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    use crate::test_sql::{bal, clean, clock, q, state};

    fn setup() {
        crate::test_sql::prepare("2030-01-01 00:00:00+00");
    }

    #[pg_test]
    fn grant_creates_customer_and_is_idempotent() {
        setup();
        let g1: pgrx::Uuid = q("SELECT billing.grant('a', 100, 'g1')");
        let g2: pgrx::Uuid = q("SELECT billing.grant('a', 100, 'g1')");
        assert_eq!(g1, g2);
        assert_eq!(bal("a"), 100);
        assert_eq!(state("SELECT billing.grant('a', 101, 'g1')"), "BL002");
        assert_eq!(state("SELECT billing.grant('a', 100, 'g1', 'promo')"), "BL002");
        assert_eq!(state("SELECT billing.grant('a', 0, 'g2')"), "22023");
        assert_eq!(state("SELECT billing.grant('a', -5, 'g2')"), "22023");
        assert_eq!(state("SELECT billing.grant(NULL, 5, 'g2')"), "22023");
        assert_eq!(state("SELECT billing.grant('a', NULL, 'g2')"), "22023");
        assert_eq!(state("SELECT billing.grant('a', 5, NULL)"), "22023");
        assert_eq!(state("SELECT billing.grant('a', 5, '')"), "22023");
        assert_eq!(state("SELECT billing.grant('', 5, 'k')"), "22023");
        assert_eq!(state("SELECT billing.grant('a', 5, repeat('k', 256))"), "22023");
        assert_eq!(state("SELECT billing.grant('a', 5, 'g3', 'promo', '2029-01-01')"), "22023");
        assert_eq!(state("SELECT billing.grant('a', 9223372036854775807, 'g4')"), "22003");
        assert_eq!(bal("a"), 100);
        clean();
    }

    /// The CHECK constraints 0.8.0 dropped from the rows a reserve, a settle, a usage and an
    /// ingest write (sql/billing--0.7.0--0.8.0.sql) are verify()'s to report now: a row written past
    /// the functions that breaks one shows up under its check.
    #[pg_test]
    fn verify_reports_rows_the_dropped_checks_refused() {
        setup();
        Spi::run("SELECT billing.grant('a', 100, 'g')").unwrap();
        let r: pgrx::Uuid = q("SELECT billing.reserve('a', 10, 'h')");
        Spi::run(&format!("SELECT billing.settle('{r}', 4)")).unwrap();
        clean();
        Spi::run(
            "INSERT INTO billing.reservations (customer, id, amount, ttl, status, expires_at, accounts, amounts, hold_entry, created_at)
                  VALUES ('a', gen_random_uuid(), 0, '1 hour', 'bogus', now(), '{}', '{}', gen_random_uuid(), now());
             INSERT INTO billing.usage_carry (customer, meter, num, den) VALUES ('a', 'm', 5, 3);
             INSERT INTO billing.usage_events (customer, idempotency_key, meter, quantity, occurred_at, credits, recorded_at)
                  VALUES ('a', 'u', 'm', 0, now(), -1, now());
             INSERT INTO billing.events (provider, event_id, endpoint, type, body, headers, received_at, status, last_delivery_at)
                  VALUES ('stripe', 'evt_bogus', 'e', 'x', '{}', '{}', now(), 'bogus', now());
             INSERT INTO billing.outbox (customer, kind, payload) VALUES ('a', 'bogus', '{}')",
        )
        .unwrap();
        for check in ["reservation_row", "usage_carry", "usage_row", "event_status", "outbox_kind"] {
            let n: i64 = q(&format!("SELECT count(*) FROM billing.verify() WHERE check_name = '{check}'"));
            assert_eq!(n, 1, "verify() reports {check} once");
        }
    }

    /// An entry dated after now (what a test clock left on a pooled connection wrote
    /// before the clock became transaction-scoped) is reported as future_entry, by
    /// customer and entry; at a clock past it, it is not.
    #[pg_test]
    fn verify_reports_entries_dated_after_now() {
        setup();
        Spi::run("SELECT billing.grant('now', 10, 'g')").unwrap();
        crate::test_sql::clock("2999-01-01 00:00:00+00");
        Spi::run("SELECT billing.grant('later', 10, 'g')").unwrap();
        let entry: pgrx::Uuid = q("SELECT entry_id FROM billing.journal WHERE customer = 'later'");
        clean();
        // (the pg_tests' present is 2030: setup's clock)
        crate::test_sql::clock("2030-06-01 00:00:00+00");
        let found: String = q("SELECT string_agg(customer || ' ' || detail, '; ') FROM billing.verify() WHERE check_name = 'future_entry'");
        assert!(found.starts_with(&format!("later entry {entry} is dated 2999-01-01")), "{found}");
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.verify()"), 1);
    }

    /// A jsonb argument nested deeper than Rust reads is refused with 22023 before pgrx
    /// converts it (which would panic into XX000); one level less is taken, in arrays and
    /// in objects, for each function with a jsonb argument.
    #[pg_test]
    fn jsonb_nested_past_the_limit_is_refused() {
        setup();
        let max = crate::error::JSON_MAX_DEPTH;
        let arrays = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let objects = |n: usize| format!("{}1{}", "{\"a\": ".repeat(n), "}".repeat(n));
        for deep in [arrays(max + 1), objects(max + 1), format!("{{\"x\": [1, {}]}}", arrays(max))] {
            assert_eq!(state(&format!("SELECT billing.grant('a', 5, 'g1', NULL, NULL, 0, '{deep}')")), "22023");
            assert_eq!(state(&format!("SELECT billing.debit('a', 1, 'd1', '{deep}')")), "22023");
            assert_eq!(state(&format!("SELECT billing.verify_signature('stripe', ARRAY['s'], '{deep}', '{{}}')")), "22023");
            assert_eq!(state(&format!("SELECT billing.ingest('nowhere', '{deep}', '{{}}')")), "22023");
        }
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.journal"), 0);
        for (i, ok) in [arrays(max), objects(max), "5".to_string(), "{}".to_string()].iter().enumerate() {
            Spi::run(&format!("SELECT billing.grant('a', 5, 'g{i}', NULL, NULL, 0, '{ok}')")).unwrap();
        }
        assert_eq!(bal("a"), 20);
        clean();
    }

    #[pg_test]
    fn debit_consumes_in_documented_order() {
        setup();
        q::<pgrx::Uuid>("SELECT billing.grant('a', 100, 'never')");
        q::<pgrx::Uuid>("SELECT billing.grant('a', 100, 'late', 'p', '2030-03-01')");
        q::<pgrx::Uuid>("SELECT billing.grant('a', 100, 'soon-lo', 'p', '2030-02-01', 0)");
        q::<pgrx::Uuid>("SELECT billing.grant('a', 100, 'soon-hi', 'p', '2030-02-01', 9)");
        assert_eq!(q::<i64>("SELECT balance_after FROM billing.debit('a', 150, 'd1')"), 250);
        let left = |k: &str| -> i64 {
            q(&format!(
                "SELECT g.remaining FROM billing._grants_now g JOIN billing.journal j ON j.entry_id = g.entry_id WHERE j.idempotency_key = '{k}'"
            ))
        };
        assert_eq!((left("soon-hi"), left("soon-lo"), left("late"), left("never")), (0, 50, 100, 100));
        // provenance is on the entry
        assert_eq!(q::<i64>("SELECT cardinality(accounts)::bigint FROM billing.journal WHERE idempotency_key = 'd1'"), 2);
        clean();
    }

    /// The one-row functions return one composite (`one_row`): every way SQL calls a
    /// function gets the one row, once per call, and errors still raise.
    #[pg_test]
    fn one_row_results_in_every_calling_form() {
        setup();
        q::<pgrx::Uuid>("SELECT billing.grant('a', 100, 'g')");
        // In FROM, as a LATERAL per outer row, and in the target list (ProjectSet).
        assert_eq!(q::<i64>("SELECT balance_after FROM billing.debit('a', 1, 'f1')"), 99);
        assert_eq!(
            q::<i64>("SELECT sum(d.balance_after)::bigint FROM generate_series(1, 3) i, LATERAL billing.debit('a', 1, 'l' || i) d"),
            98 + 97 + 96
        );
        assert_eq!(q::<i64>("SELECT count(*) FROM (SELECT billing.debit('a', 1, 't' || i) FROM generate_series(1, 4) i) s"), 4);
        assert_eq!(bal("a"), 92);
        assert_eq!(q::<i64>("SELECT (billing.debit('a', 2, 'x')).balance_after"), 90);
        // A replay through a different form gives the first answer again.
        assert!(q::<bool>("SELECT (billing.debit('a', 2, 'x')).replayed"));
        assert_eq!(q::<i64>("SELECT balance_after FROM billing.debit('a', 1, 't1')"), 95);
        // PL/pgSQL: SELECT INTO and FOR over the result, and an error inside the loop.
        Spi::run(
            "DO $$ DECLARE r record; BEGIN
               SELECT * INTO r FROM billing.debit('a', 5, 'p1');
               FOR r IN SELECT * FROM billing.debit('a', 5, 'p2') LOOP
                 PERFORM set_config('t.b', r.balance_after::text, true);
               END LOOP; END $$",
        )
        .unwrap();
        assert_eq!(q::<String>("SELECT current_setting('t.b')"), "80");
        assert_eq!(state("SELECT * FROM generate_series(1, 2) i, LATERAL billing.debit('a', 1000, 'big' || i)"), "BL001");
        assert_eq!(state("SELECT billing.debit('a', 1, 'f1', '{\"other\": 1}')"), "BL002");
        assert_eq!(bal("a"), 80);
        // The other one-row functions in the target list.
        let h: pgrx::Uuid = q("SELECT billing.reserve('a', 10, 'h')");
        assert_eq!(q::<i64>(&format!("SELECT (billing.settle('{h}', 4)).balance_after")), 76);
        clean();
    }

    #[pg_test]
    fn debit_replays_and_refuses() {
        setup();
        q::<pgrx::Uuid>("SELECT billing.grant('a', 100, 'g')");
        let (e1, b1, r1) = Spi::get_three::<pgrx::Uuid, i64, bool>("SELECT * FROM billing.debit('a', 30, 'd', '{\"m\":1}')").unwrap();
        let (e2, b2, r2) = Spi::get_three::<pgrx::Uuid, i64, bool>("SELECT * FROM billing.debit('a', 30, 'd', '{\"m\":1}')").unwrap();
        assert_eq!((e1, b1, r1), (e2, b2, Some(false)));
        assert_eq!(r2, Some(true));
        assert_eq!(b1, Some(70));
        assert_eq!(state("SELECT billing.debit('a', 31, 'd', '{\"m\":1}')"), "BL002");
        assert_eq!(state("SELECT billing.debit('a', 30, 'd', '{\"m\":2}')"), "BL002");
        assert_eq!(state("SELECT billing.debit('a', 30, 'g')"), "BL002"); // a grant's key
        assert_eq!(state("SELECT billing.debit('a', 71, 'd2')"), "BL001");
        assert_eq!(state("SELECT billing.debit('nobody', 1, 'd3')"), "BL003");
        assert_eq!(state("SELECT billing.debit('a', 0, 'd4')"), "22023");
        assert_eq!(state("SELECT billing.debit('a', NULL, 'd4')"), "22023");
        assert_eq!(state("SELECT billing.debit('a', 1, '')"), "22023");
        assert_eq!(state("SELECT billing.debit(NULL, 1, 'd4')"), "22023");
        assert_eq!(bal("a"), 70);
        // keys are per customer
        q::<pgrx::Uuid>("SELECT billing.grant('b', 100, 'g')");
        assert_eq!(q::<i64>("SELECT balance_after FROM billing.debit('b', 30, 'd')"), 70);
        clean();
    }

    /// A retry replays even when the customer is now short or frozen, and a reused key is
    /// BL002 whatever else is wrong: the key is answered before anything else.
    #[pg_test]
    fn debit_retries_replay_whatever_changed_since() {
        setup();
        q::<pgrx::Uuid>("SELECT billing.grant('a', 100, 'g')");
        assert_eq!(q::<i64>("SELECT balance_after FROM billing.debit('a', 60, 'd1')"), 40);
        assert_eq!(q::<i64>("SELECT balance_after FROM billing.debit('a', 40, 'd2')"), 0);
        // short now: the retry still replays, with its first balance
        assert_eq!(q::<String>("SELECT format('%s/%s', balance_after, replayed) FROM billing.debit('a', 60, 'd1')"), "40/t");
        assert_eq!(state("SELECT billing.debit('a', 61, 'd1')"), "BL002");
        assert_eq!(state("SELECT billing.debit('a', 1, 'd3')"), "BL001");
        // frozen: a retry replays, a new debit is refused
        Spi::run("SELECT billing.set_frozen('a')").unwrap();
        assert!(q::<bool>("SELECT replayed FROM billing.debit('a', 40, 'd2')"));
        assert_eq!(state("SELECT billing.debit('a', 1, 'd4')"), "BL004");
        assert_eq!(state("SELECT billing.debit('a', 41, 'd2')"), "BL002");
        Spi::run("SELECT billing.set_frozen('a', false)").unwrap();
        // the same key twice in one transaction, and a key another kind of call used
        q::<pgrx::Uuid>("SELECT billing.grant('a', 100, 'g2')");
        assert_eq!(q::<String>("SELECT string_agg(replayed::text, ',' ORDER BY n) FROM generate_series(1, 3) n, LATERAL billing.debit('a', 5, 'twice' || left(n::text, 0)) d"), "false,true,true");
        let _r: pgrx::Uuid = q("SELECT billing.reserve('a', 10, 'held')");
        assert_eq!(state("SELECT billing.debit('a', 10, 'held')"), "BL002");
        assert_eq!(bal("a"), 85);
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.journal WHERE idempotency_key = 'twice'"), 1);
        clean();
    }

    #[pg_test]
    fn overdraft_and_repayment() {
        setup();
        q::<pgrx::Uuid>("SELECT billing.grant('a', 50, 'g')");
        assert_eq!(state("SELECT billing.debit('a', 80, 'd1')"), "BL001");
        Spi::run("SELECT billing.set_overdraft('a', 40)").unwrap();
        assert_eq!(q::<i64>("SELECT balance_after FROM billing.debit('a', 80, 'd1')"), -30);
        assert_eq!(state("SELECT billing.debit('a', 11, 'd2')"), "BL001");
        // the next grant repays the debt first
        q::<pgrx::Uuid>("SELECT billing.grant('a', 100, 'g2')");
        assert_eq!(bal("a"), 70);
        assert_eq!(q::<i64>("SELECT od FROM billing.customers WHERE customer = 'a'"), 0);
        assert_eq!(state("SELECT billing.set_overdraft('a', -1)"), "22023");
        assert_eq!(state("SELECT billing.set_overdraft('nobody', 1)"), "BL003");
        assert_eq!(state("SELECT billing.set_overdraft('a', NULL)"), "22023");
        clean();
    }

    /// A grant's row is inserted with what its entry gives it, and not updated after: on
    /// a customer with a pending draw (written down, as before), in debt, and wholly taken
    /// by a debt.
    #[pg_test]
    fn a_new_grant_row_is_written_once() {
        setup();
        let updates = || q::<i64>("SELECT coalesce(n_tup_upd, 0) FROM pg_stat_xact_user_tables WHERE relid = 'billing.grants'::regclass");
        // the grant's id, its row's (remaining, open) and the grant rows the call updated
        let grant = |sql: &str| {
            let before = updates();
            let g: pgrx::Uuid = q(sql);
            let r = Spi::get_two_with_args::<i64, bool>("SELECT remaining, open FROM billing.grants WHERE id = $1", &[g.into()]).unwrap();
            ((r.0.unwrap(), r.1.unwrap()), updates() - before)
        };
        assert_eq!(grant("SELECT billing.grant('once', 50, 'g1')"), ((50, true), 0));
        Spi::run("SELECT billing.debit('once', 20, 'd1')").unwrap();
        assert_eq!(q::<i64>("SELECT draw FROM billing.customers WHERE customer = 'once'"), 20);
        assert_eq!(grant("SELECT billing.grant('once', 30, 'g2')"), ((30, true), 1));
        assert_eq!(bal("once"), 60);
        Spi::run("SELECT billing.set_overdraft('once', 100)").unwrap();
        Spi::run("SELECT billing.debit('once', 150, 'd2')").unwrap();
        assert_eq!(grant("SELECT billing.grant('once', 100, 'g3')"), ((10, true), 0));
        Spi::run("SELECT billing.debit('once', 50, 'd3')").unwrap();
        assert_eq!(grant("SELECT billing.grant('once', 20, 'g4')"), ((0, false), 0));
        assert_eq!(bal("once"), -20);
        clean();
    }

    #[pg_test]
    fn frozen_customers_cannot_spend() {
        setup();
        q::<pgrx::Uuid>("SELECT billing.grant('a', 50, 'g')");
        Spi::run("SELECT billing.set_frozen('a', true)").unwrap();
        assert_eq!(state("SELECT billing.debit('a', 1, 'd')"), "BL004");
        assert_eq!(state("SELECT billing.reserve('a', 1, 'r')"), "BL004");
        q::<pgrx::Uuid>("SELECT billing.grant('a', 5, 'g2')"); // grants still land
        Spi::run("SELECT billing.set_frozen('a', false)").unwrap();
        assert_eq!(q::<i64>("SELECT balance_after FROM billing.debit('a', 1, 'd')"), 54);
        assert_eq!(state("SELECT billing.set_frozen('nobody')"), "BL003");
        clean();
    }

    #[pg_test]
    fn holds_count_under_the_same_rule() {
        setup();
        q::<pgrx::Uuid>("SELECT billing.grant('a', 5000, 'g')");
        for i in 0..5 {
            q::<pgrx::Uuid>(&format!("SELECT billing.reserve('a', 1000, 'h{i}')"));
        }
        assert_eq!(state("SELECT billing.reserve('a', 1000, 'h5')"), "BL001");
        assert_eq!(state("SELECT billing.debit('a', 1, 'd')"), "BL001");
        assert_eq!(bal("a"), 0);
        let again: pgrx::Uuid = q("SELECT billing.reserve('a', 1000, 'h0')");
        let first: pgrx::Uuid = q("SELECT reservation_id FROM billing.journal WHERE idempotency_key = 'h0'");
        assert_eq!(again, first);
        assert_eq!(state("SELECT billing.reserve('a', 999, 'h0')"), "BL002");
        assert_eq!(state("SELECT billing.reserve('a', 1000, 'h9', '0 seconds')"), "22023");
        assert_eq!(state("SELECT billing.reserve('a', 1000, 'h9', NULL)"), "22023");
        assert_eq!(state("SELECT billing.reserve('nobody', 1, 'h9')"), "BL003");
        clean();
    }

    /// A hold's id carries its account's number (located as entry ids are), so settle and
    /// release by id alone find the account by it; an older hold's random id is found
    /// through the partial index. Both by the indexes (`pg::direct`) and by the statement
    /// that stands in for them on Citus and under REPEATABLE READ.
    #[pg_test]
    fn holds_are_found_by_the_number_their_id_carries() {
        setup();
        q::<pgrx::Uuid>("SELECT billing.grant('a', 1000, 'g')");
        let r: pgrx::Uuid = q("SELECT billing.reserve('a', 100, 'h')");
        let num: i64 = q("SELECT num FROM billing.customers WHERE customer = 'a'");
        let located = crate::ledger::entry_id::locate(&crate::pg::spi::id_of(&r));
        assert_eq!(located.map(|l| l.0), Some(num), "{r}");
        assert!(!q::<bool>(&format!(
            "SELECT EXISTS (SELECT FROM billing.reservations WHERE id < 'ff000000-0000-0000-0000-000000000000' AND id = '{r}')"
        )));
        // Another seq of the same account: no such hold (and no customer named).
        let forged = crate::pg::spi::uuid(&crate::ledger::entry_id::located(num, 999, [0; 5]).unwrap());
        assert_eq!(state(&format!("SELECT billing.settle('{forged}', 1)")), "BL003");
        // A hold made before 0.9.0 (a random version-7 id), as an upgraded database has it.
        let old: pgrx::Uuid = q("SELECT billing.reserve('a', 100, 'h2')");
        let v7 = "01900000-0000-7000-8000-000000000001";
        Spi::run(&format!(
            "ALTER TABLE billing.journal DISABLE TRIGGER journal_append_only;
             UPDATE billing.reservations SET id = '{v7}' WHERE id = '{old}';
             UPDATE billing.journal SET reservation_id = '{v7}' WHERE reservation_id = '{old}';
             ALTER TABLE billing.journal ENABLE TRIGGER journal_append_only"
        ))
        .unwrap();
        // The statement, as Citus and a transaction snapshot run it.
        let by_stmt = |id: &str, num: Option<i64>| -> Option<String> {
            let id: pgrx::Uuid = q(&format!("SELECT '{id}'::uuid"));
            Spi::connect_mut(|c| {
                let t = crate::pg::spi::run(c, &crate::ledger::api::RES_CUSTOMER, &[id.into(), num.into()]).unwrap();
                if t.is_empty() {
                    None
                } else {
                    t.first().get::<String>(1).unwrap()
                }
            })
        };
        assert_eq!(by_stmt(&r.to_string(), Some(num)).as_deref(), Some("a"));
        assert_eq!(by_stmt(v7, None).as_deref(), Some("a"));
        assert_eq!(by_stmt(&forged.to_string(), Some(num)), None);
        // By the indexes.
        assert_eq!(q::<i64>(&format!("SELECT balance_after FROM billing.settle('{r}', 40)")), 860);
        assert_eq!(q::<i64>(&format!("SELECT balance_after FROM billing.settle('{v7}', 60)")), 900);
        assert_eq!(state(&format!("SELECT billing.release('{v7}')")), "BL005");
        clean();
    }

    #[pg_test]
    fn settle_release_extend() {
        setup();
        q::<pgrx::Uuid>("SELECT billing.grant('a', 1000, 'g')");
        let r: pgrx::Uuid = q("SELECT billing.reserve('a', 300, 'h')");
        assert_eq!(bal("a"), 700);
        let s = format!("SELECT balance_after FROM billing.settle('{r}', 120)");
        assert_eq!(q::<i64>(&s), 880);
        // settling again with the same amount replays; with another is refused
        assert!(q::<bool>(&format!("SELECT replayed FROM billing.settle('{r}', 120)")));
        assert_eq!(state(&format!("SELECT billing.settle('{r}', 121)")), "BL005");
        assert_eq!(state(&format!("SELECT billing.release('{r}')")), "BL005");
        assert_eq!(state(&format!("SELECT billing.extend('{r}', '1 minute')")), "BL005");

        // above the hold: the extra only if available, else BL001 and the hold stays
        let r2: pgrx::Uuid = q("SELECT billing.reserve('a', 100, 'h2')");
        assert_eq!(state(&format!("SELECT billing.settle('{r2}', 1000)")), "BL001");
        assert_eq!(q::<String>(&format!("SELECT status FROM billing.reservations WHERE id = '{r2}'")), "active");
        assert_eq!(q::<i64>(&format!("SELECT balance_after FROM billing.settle('{r2}', 250)")), 630);

        let r3: pgrx::Uuid = q("SELECT billing.reserve('a', 100, 'h3')");
        assert_eq!(q::<i64>(&format!("SELECT balance_after FROM billing.release('{r3}')")), 630);
        assert!(q::<bool>(&format!("SELECT replayed FROM billing.release('{r3}')")));
        assert_eq!(state(&format!("SELECT billing.settle('{r3}', 1)")), "BL005");

        let r4: pgrx::Uuid = q("SELECT billing.reserve('a', 100, 'h4', '10 minutes')");
        clock("2030-01-01 00:09:00+00");
        let until: TimestampWithTimeZone = q(&format!("SELECT billing.extend('{r4}', '10 minutes')"));
        assert_eq!(until, q::<TimestampWithTimeZone>("SELECT '2030-01-01 00:19:00+00'::timestamptz"));
        clock("2030-01-01 00:18:59+00");
        assert_eq!(bal("a"), 530);
        clock("2030-01-01 00:19:00+00"); // lapses at that instant
        assert_eq!(bal("a"), 630);
        assert_eq!(state(&format!("SELECT billing.settle('{r4}', 1)")), "BL005");
        assert_eq!(state(&format!("SELECT billing.extend('{r4}', '1 minute')")), "BL005");

        assert_eq!(state("SELECT billing.settle('00000000-0000-0000-0000-00000000abcd', 1)"), "BL003");
        assert_eq!(state(&format!("SELECT billing.settle('{r4}', -1)")), "22023");
        assert_eq!(state(&format!("SELECT billing.settle('{r4}', NULL)")), "22023");
        assert_eq!(state("SELECT billing.settle(NULL, 1)"), "22023");
        assert_eq!(state("SELECT billing.release(NULL)"), "22023");
        assert_eq!(state(&format!("SELECT billing.extend('{r4}', '-1 minute')")), "22023");
        clean();
    }

    #[pg_test]
    fn refunds_return_to_their_grants() {
        setup();
        let promo: pgrx::Uuid = q("SELECT billing.grant('a', 100, 'promo', 'promo', '2030-02-01')");
        q::<pgrx::Uuid>("SELECT billing.grant('a', 1000, 'buy')");
        let e: pgrx::Uuid = q("SELECT entry_id FROM billing.debit('a', 150, 'd')");
        assert_eq!(bal("a"), 950);
        // partial refund: the credits taken last (from the purchase) come back first
        assert_eq!(q::<i64>(&format!("SELECT balance_after FROM billing.refund('{e}', 40, 'r1')")), 990);
        assert!(q::<bool>(&format!("SELECT replayed FROM billing.refund('{e}', 40, 'r1')")));
        assert_eq!(state(&format!("SELECT billing.refund('{e}', 41, 'r1')")), "BL002");
        assert_eq!(state(&format!("SELECT billing.refund('{e}', 111, 'r2')")), "22023");
        // the rest, keyless; a keyless retry replays
        assert_eq!(q::<i64>(&format!("SELECT balance_after FROM billing.refund('{e}')")), 1100);
        assert!(q::<bool>(&format!("SELECT replayed FROM billing.refund('{e}')")));
        assert_eq!(state(&format!("SELECT billing.refund('{e}', 1, 'r3')")), "22023");
        assert_eq!(q::<i64>(&format!("SELECT remaining FROM billing._grants_now WHERE id = '{promo}'")), 100);
        assert_eq!(q::<i64>(&format!("SELECT refunded FROM billing.grant_status WHERE grant_id = '{promo}'")), 100);

        // a refund onto an expired grant is recorded and does not become spendable
        let e2: pgrx::Uuid = q("SELECT entry_id FROM billing.debit('a', 100, 'd2')");
        clock("2030-03-01 00:00:00+00");
        assert_eq!(bal("a"), 1000);
        assert_eq!(q::<i64>(&format!("SELECT balance_after FROM billing.refund('{e2}')")), 1000);
        assert_eq!(q::<i64>(&format!("SELECT refunded FROM billing.grant_status WHERE grant_id = '{promo}'")), 200);
        assert_eq!(q::<i64>(&format!("SELECT expired FROM billing.grant_status WHERE grant_id = '{promo}'")), 100);

        let g: pgrx::Uuid = q("SELECT entry_id FROM billing.journal WHERE idempotency_key = 'buy'");
        assert_eq!(state(&format!("SELECT billing.refund('{g}')")), "22023"); // a grant
        assert_eq!(state("SELECT billing.refund('00000000-0000-0000-0000-00000000abcd')"), "BL003");
        assert_eq!(state("SELECT billing.refund(NULL)"), "22023");
        assert_eq!(state(&format!("SELECT billing.refund('{e}', 0, 'z')")), "22023");
        clean();
    }

    #[pg_test]
    fn refund_of_a_settle_uses_its_provenance() {
        setup();
        q::<pgrx::Uuid>("SELECT billing.grant('a', 100, 'g')");
        let r: pgrx::Uuid = q("SELECT billing.reserve('a', 60, 'h')");
        let e: pgrx::Uuid = q(&format!("SELECT entry_id FROM billing.settle('{r}', 50)"));
        assert_eq!(bal("a"), 50);
        assert_eq!(state(&format!("SELECT billing.refund('{e}', 51)")), "22023");
        assert_eq!(q::<i64>(&format!("SELECT balance_after FROM billing.refund('{e}')")), 100);
        clean();
    }

    #[pg_test]
    fn expiry_is_exact_without_a_job() {
        setup();
        q::<pgrx::Uuid>("SELECT billing.grant('a', 100, 'promo', 'promo', '2030-01-02 00:00:00+00')");
        q::<pgrx::Uuid>("SELECT billing.grant('a', 10, 'buy')");
        clock("2030-01-01 23:59:59.999999+00");
        assert_eq!(bal("a"), 110);
        clock("2030-01-02 00:00:00+00");
        assert_eq!(bal("a"), 10);
        assert_eq!(state("SELECT billing.debit('a', 11, 'd')"), "BL001");
        // nothing was written by the reads; a write catches up at the expiry's own instant
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.journal WHERE kind = 'expiry'"), 0);
        assert_eq!(q::<i64>("SELECT balance_after FROM billing.debit('a', 5, 'd')"), 5);
        assert_eq!(
            q::<TimestampWithTimeZone>("SELECT at FROM billing.journal WHERE kind = 'expiry'"),
            q::<TimestampWithTimeZone>("SELECT '2030-01-02 00:00:00+00'::timestamptz")
        );
        assert_eq!(q::<i64>("SELECT billing.maintenance()"), 0);
        clean();
    }

    #[pg_test]
    fn maintenance_writes_expiry_rows() {
        setup();
        q::<pgrx::Uuid>("SELECT billing.grant('a', 100, 'promo', 'promo', '2030-01-02')");
        q::<pgrx::Uuid>("SELECT billing.grant('b', 100, 'promo', 'promo', '2030-01-03')");
        q::<pgrx::Uuid>("SELECT billing.reserve('b', 30, 'h', '1 hour')");
        clock("2030-01-05 00:00:00+00");
        // a's grant expires; b's hold lapses, then b's grant expires
        assert_eq!(q::<i64>("SELECT billing.maintenance()"), 3);
        assert_eq!(q::<i64>("SELECT billing.maintenance()"), 0);
        assert_eq!(q::<String>("SELECT status FROM billing.reservations"), "expired");
        assert_eq!(bal("a") + bal("b"), 0);
        assert_eq!(state("SELECT billing.maintenance(0)"), "22023");
        clean();
    }

    #[pg_test]
    fn balance_at_reads_the_past() {
        setup();
        q::<pgrx::Uuid>("SELECT billing.grant('a', 100, 'g', 'p', '2030-01-10')");
        clock("2030-01-02 00:00:00+00");
        q::<i64>("SELECT balance_after FROM billing.debit('a', 30, 'd')");
        clock("2030-01-20 00:00:00+00");
        assert_eq!(q::<i64>("SELECT billing.balance_at('a', '2029-12-31')"), 0);
        assert_eq!(q::<i64>("SELECT billing.balance_at('a', '2030-01-01 12:00+00')"), 100);
        assert_eq!(q::<i64>("SELECT billing.balance_at('a', '2030-01-05')"), 70);
        assert_eq!(q::<i64>("SELECT billing.balance_at('a', '2030-01-15')"), 0);
        assert_eq!(state("SELECT billing.balance_at('nobody', now())"), "BL003");
        assert_eq!(state("SELECT billing.balance_at('a', NULL)"), "22023");
        assert_eq!(state("SELECT billing.balance('nobody')"), "BL003");
        assert_eq!(state("SELECT billing.balance(NULL)"), "22023");
        clean();
    }

    #[pg_test]
    fn journal_is_append_only() {
        setup();
        // A customer of its own: TRUNCATE waits for every test's hold on the journal, and
        // one waiting for this test's customer lock (another test's 'a') would deadlock.
        q::<pgrx::Uuid>("SELECT billing.grant('append-only', 100, 'g')");
        assert_eq!(state("UPDATE billing.journal SET amount = 1"), "42501");
        assert_eq!(state("DELETE FROM billing.journal"), "42501");
        assert_eq!(state("TRUNCATE billing.journal"), "42501");
        clean();
    }

    #[pg_test]
    fn verify_finds_tampering() {
        setup();
        q::<pgrx::Uuid>("SELECT billing.grant('a', 100, 'g')");
        Spi::run("UPDATE billing.grants SET remaining = 99").unwrap();
        Spi::run("UPDATE billing.customers SET balance = 7").unwrap();
        let checks: Vec<String> = Spi::connect(|c| {
            c.select("SELECT check_name FROM billing.verify() ORDER BY 1", None, &[]).unwrap().map(|r| r.get::<String>(1).unwrap().unwrap()).collect()
        });
        assert!(checks.contains(&"grant_remaining".to_string()), "{checks:?}");
        assert!(checks.contains(&"customer_balance".to_string()), "{checks:?}");
    }

    #[pg_test]
    fn functions_are_security_definer_with_pinned_search_path() {
        setup();
        let loose: i64 = q("SELECT count(*) FROM pg_proc p WHERE p.pronamespace = 'billing'::regnamespace
                             AND p.prokind = 'f' AND p.prorettype <> 'trigger'::regtype
                             AND (NOT p.prosecdef OR NOT coalesce(p.proconfig::text LIKE '%search_path=pg_catalog, pg_temp%', false))");
        assert_eq!(loose, 0);
        let public: i64 = q("SELECT count(*) FROM pg_proc p WHERE p.pronamespace = 'billing'::regnamespace
                              AND has_function_privilege('public', p.oid, 'EXECUTE')");
        assert_eq!(public, 0);
    }

    /// The parameters `spi` builds by hand are the values SQL makes of the same input.
    #[pg_test]
    fn hand_built_parameters_equal_what_sql_makes() {
        use crate::pg::spi::{int8_array, jsonb_param, uuid_array};
        let u = |b: u8| pgrx::Uuid::from_bytes([b; 16]);
        let same: Vec<bool> = Spi::connect(|c| {
            let t = c.select(
                "SELECT $1 = '{}'::jsonb AND $1::text = '{}' AND jsonb_typeof($1) = 'object',
                        $2 = '{\"a\": [1, \"x\"]}'::jsonb,
                        $3 = ARRAY['01010101-0101-0101-0101-010101010101', 'fefefefe-fefe-fefe-fefe-fefefefefefe']::uuid[],
                        $4 = '{}'::uuid[] AND array_ndims($4) IS NULL,
                        $5 = ARRAY[1, -2, 9223372036854775807, -9223372036854775808]::int8[],
                        $6 = '{}'::int8[]",
                None,
                &[
                    jsonb_param(serde_json::json!({})),
                    jsonb_param(serde_json::json!({"a": [1, "x"]})),
                    uuid_array(&[u(1), u(0xfe)]),
                    uuid_array(&[]),
                    int8_array(&[1, -2, i64::MAX, i64::MIN]),
                    int8_array(&[]),
                ],
            )?;
            let r = t.first();
            (1..=6).map(|i| r.get::<bool>(i).map(|b| b == Some(true))).collect::<Result<Vec<_>, _>>()
        })
        .unwrap();
        assert_eq!(same, vec![true; 6]);
    }
}
