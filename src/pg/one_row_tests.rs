//! `#[pg_test]`s of the one-row functions as composite values (`one_row`; declared in
//! sql/ledger.sql, webhooks.sql, plans.sql, usage.sql): each of them in every way SQL calls a function (in FROM, a field of
//! it, the whole value, inside `coalesce`, per row of a `LATERAL`, in PL/pgSQL), with its
//! declaration and privileges, and its errors with their SQLSTATEs in each of those ways.
#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    use crate::test_sql::{bal, clean, q, state};

    const SECRET: &str = "whsec_onerow";
    const T0: i64 = 1_900_000_000; // the clock below

    /// A one-row function: its call, given a SQL text expression that makes each call's
    /// key (or event) its own; a column and the text every such call answers in it; a
    /// call that fails, and its SQLSTATE.
    struct Fun {
        name: &'static str,
        call: fn(&str) -> String,
        col: &'static str,
        want: &'static str,
        fails: &'static str,
        code: &'static str,
    }

    /// A signed delivery of an event that changes nothing (`ignored`), by tag.
    fn ingest_call(t: &str) -> String {
        format!(
            "billing.ingest('s', (SELECT d.headers FROM pg_temp.deliv d WHERE d.tag = {t}), (SELECT d.body FROM pg_temp.deliv d WHERE d.tag = {t}))"
        )
    }

    fn event_sql(id: &str) -> String {
        format!(
            "format('{{\"id\":\"%s\",\"object\":\"event\",\"type\":\"customer.created\",\"created\":{T0},\"data\":{{\"object\":{{\"id\":\"cus_1\",\"object\":\"customer\"}}}}}}', {id})"
        )
    }

    fn funs() -> Vec<Fun> {
        vec![
            Fun {
                name: "debit",
                call: |t| format!("billing.debit('a', 1, 'd.' || {t})"),
                col: "replayed",
                want: "false",
                fails: "billing.debit('a', 1000000, 'big')",
                code: "BL001",
            },
            Fun {
                name: "settle",
                call: |t| format!("billing.settle(billing.reserve('a', 10, 's.' || {t}), 4)"),
                col: "replayed",
                want: "false",
                fails: "billing.settle(gen_random_uuid(), 1)",
                code: "BL003",
            },
            Fun {
                name: "release",
                call: |t| format!("billing.release(billing.reserve('a', 10, 'r.' || {t}))"),
                col: "replayed",
                want: "false",
                fails: "billing.release(gen_random_uuid())",
                code: "BL003",
            },
            Fun {
                // the entry to refund from another one-row function, as an argument
                name: "refund",
                call: |t| format!("billing.refund((billing.debit('a', 5, 'rd.' || {t})).entry_id, 2)"),
                col: "replayed",
                want: "false",
                fails: "billing.refund(gen_random_uuid())",
                code: "BL003",
            },
            Fun {
                name: "access",
                call: |t| format!("billing.access('a', 'chat' || left({t}, 0))"),
                col: "reason",
                want: "active",
                fails: "billing.access(NULL)",
                code: "22023",
            },
            Fun {
                name: "charge",
                call: |t| format!("billing.charge('a', 'chat', 1, 'c.' || {t})"),
                col: "replayed",
                want: "false",
                fails: "billing.charge('nobody', 'chat', 1, 'k')",
                code: "BL003",
            },
            Fun {
                name: "record_usage",
                call: |t| format!("billing.record_usage('a', 'tok', 1000, 'u.' || {t})"),
                col: "credits",
                want: "3",
                fails: "billing.record_usage('nobody', 'tok', 1, 'k')",
                code: "BL003",
            },
            Fun { name: "ingest", call: ingest_call, col: "status", want: "ignored", fails: "billing.ingest('nope', '{}', '{}')", code: "BL013" },
            Fun {
                name: "replay",
                call: |t| format!("billing.replay('stripe', 'evt_base' || left({t}, 0))"),
                col: "status",
                want: "ignored",
                fails: "billing.replay('stripe', 'evt_nope')",
                code: "BL003",
            },
            Fun {
                name: "replay(event_id)",
                call: |t| format!("billing.replay('evt_base' || left({t}, 0))"),
                col: "detail",
                want: "no effect for customer.created",
                fails: "billing.replay('evt_nope')",
                code: "BL003",
            },
            Fun {
                name: "ingest_fetched",
                call: |t| format!("billing.ingest_fetched('s', {})", event_sql(&format!("'evt_f.' || {t}"))),
                col: "event_id",
                want: "",
                fails: "billing.ingest_fetched('nope', '{}')",
                code: "BL013",
            },
        ]
    }

    /// The tags each function's calls use below.
    const FORMS: [&str; 5] = ["from", "field", "whole", "type", "coalesce"];
    const PL: [&str; 4] = ["into", "assign", "coalesce", "for"];

    fn setup() {
        crate::test_sql::prepare("2030-03-17 17:46:40+00");
        Spi::run(&format!(
            "SELECT billing.grant('a', 100000, 'g');
             SELECT billing.define_meter('tok', 3, 1000);
             SELECT billing.add_endpoint('s', 'stripe');
             SELECT billing.add_secret('s', '{SECRET}');
             CREATE TABLE pg_temp.deliv (tag text PRIMARY KEY, headers jsonb, body text)"
        ))
        .unwrap();
        let mut tags: Vec<String> = FORMS.iter().map(|f| format!("'{f}'")).collect();
        tags.extend((1..=3).map(|i| format!("'l{i}'")));
        for p in ["p1", "p2"] {
            tags.extend(PL.iter().map(|f| format!("'{p}.{f}'")));
        }
        for tag in tags {
            let body: String = q(&format!("SELECT {}", event_sql(&format!("'evt_i.' || {tag}"))));
            let sig = crate::webhook::signature::sign_stripe(SECRET, T0, body.as_bytes());
            let headers = serde_json::json!({ "Stripe-Signature": sig }).to_string();
            Spi::run_with_args(&format!("INSERT INTO pg_temp.deliv VALUES ({tag}, $1::jsonb, $2)"), &[headers.as_str().into(), body.as_str().into()])
                .unwrap();
        }
        // the event replay() takes again: stored and ignored
        let base: String = q(&format!("SELECT status FROM billing.ingest_fetched('s', {})", event_sql("'evt_base'")));
        assert_eq!(base, "ignored");
    }

    fn want(f: &Fun, tag: &str) -> String {
        // ingest_fetched answers the event id it stored
        if f.name == "ingest_fetched" {
            format!("evt_f.{tag}")
        } else {
            f.want.to_string()
        }
    }

    /// Every function, in every calling form outside PL/pgSQL, gives its one row once.
    #[pg_test]
    fn each_one_row_function_in_every_calling_form() {
        setup();
        for f in funs() {
            let (n, c) = (f.name, f.col);
            let call = |tag: &str| (f.call)(&format!("'{tag}'"));
            // in FROM: one row (string_agg of more would have a comma)
            assert_eq!(q::<String>(&format!("SELECT string_agg({c}::text, ',') FROM {} x", call("from"))), want(&f, "from"), "{n} in FROM");
            // a field of the value, in a target list
            assert_eq!(q::<String>(&format!("SELECT ({}).{c}::text", call("field"))), want(&f, "field"), "{n}: (f()).{c}");
            // the whole value: one record, read afterwards
            assert_eq!(
                q::<String>(&format!("SELECT (r).{c}::text FROM (SELECT {} AS r OFFSET 0) s", call("whole"))),
                want(&f, "whole"),
                "{n}: f() as a value"
            );
            assert_eq!(q::<String>(&format!("SELECT pg_typeof({})::text", call("type"))), "record", "{n}: pg_typeof");
            // inside an expression that refuses sets
            assert_eq!(q::<String>(&format!("SELECT coalesce(({}).{c}::text, 'none')", call("coalesce"))), want(&f, "coalesce"), "{n} in coalesce()");
            // once per outer row
            let lateral = format!("SELECT string_agg(x.{c}::text, ',' ORDER BY i) FROM generate_series(1, 3) i, LATERAL {} x", (f.call)("'l' || i"));
            let w = (1..=3).map(|i| want(&f, &format!("l{i}"))).collect::<Vec<_>>().join(",");
            assert_eq!(q::<String>(&lateral), w, "{n} LATERAL");
        }
        // 5 debits of 1 (in FROM, field, whole, type, coalesce) and 3 per LATERAL, in debit
        // and charge; settles of 4; refunds of 5 - 2; usage of 1000 tokens at 3/1000
        let calls = 5 + 3;
        assert_eq!(bal("a"), 100000 - calls * (1 + 4 + 3 + 1 + 3));
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.events WHERE event_id LIKE 'evt\\_i.%'"), calls);
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.events WHERE event_id LIKE 'evt\\_f.%'"), calls);
        clean();
    }

    /// In PL/pgSQL (static SQL, plans cached across calls of the function): SELECT INTO,
    /// assignment of the composite, a field inside coalesce, FOR over the row.
    #[pg_test]
    fn each_one_row_function_in_plpgsql() {
        setup();
        for (i, f) in funs().iter().enumerate() {
            let c = f.col;
            let call = |form: &str| (f.call)(&format!("t || '.{form}'"));
            Spi::run(&format!(
                "CREATE FUNCTION pg_temp.pl_{i}(t text) RETURNS text LANGUAGE plpgsql AS $pl$
                 DECLARE r record; v text;
                 BEGIN
                     SELECT * INTO r FROM {};
                     v := r.{c}::text;
                     r := {};
                     v := v || ',' || r.{c}::text;
                     v := v || ',' || coalesce(({}).{c}::text, 'none');
                     FOR r IN SELECT * FROM {} LOOP
                         v := v || ',' || r.{c}::text;
                     END LOOP;
                     RETURN v;
                 END $pl$",
                call("into"),
                call("assign"),
                call("coalesce"),
                call("for")
            ))
            .unwrap();
            for p in ["p1", "p2"] {
                let w = PL.iter().map(|form| want(f, &format!("{p}.{form}"))).collect::<Vec<_>>().join(",");
                assert_eq!(q::<String>(&format!("SELECT pg_temp.pl_{i}('{p}')")), w, "{} in PL/pgSQL, call {p}", f.name);
            }
        }
        let calls = 2 * 4;
        assert_eq!(bal("a"), 100000 - calls * (1 + 4 + 3 + 1 + 3));
        clean();
    }

    /// An error raises its SQLSTATE in every form, and changes nothing.
    #[pg_test]
    fn errors_keep_their_sqlstate_in_every_form() {
        setup();
        let before = bal("a");
        for f in funs() {
            let (n, e, c, code) = (f.name, f.fails, f.col, f.code);
            for sql in [
                format!("SELECT * FROM {e}"),
                format!("SELECT ({e}).{c}"),
                format!("SELECT {e}"),
                format!("SELECT coalesce(({e}).{c}::text, 'none')"),
                format!("SELECT * FROM generate_series(1, 2) i, LATERAL {e} x"),
                format!("DO $$ DECLARE r record; BEGIN SELECT * INTO r FROM {e}; END $$"),
                format!("DO $$ DECLARE r record; BEGIN r := {e}; END $$"),
            ] {
                assert_eq!(state(&sql), code, "{n}: {sql}");
            }
        }
        assert_eq!(bal("a"), before);
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.journal"), 1);
        clean();
    }

    /// Several one-row functions in one statement, each call site with its own row type,
    /// called many times (the row type is kept per call site), NULL columns included.
    #[pg_test]
    fn call_sites_keep_their_own_row_types() {
        setup();
        let got: String = q("SELECT string_agg(format('%s/%s/%s/%s', (billing.debit('a', 1, 'm' || i)).balance_after,
                                                          (billing.access('a')).reason, (billing.access('a')).plan IS NULL,
                                                          (billing.record_usage('a', 'tok', 1000, 'mu' || i)).credits), ',' ORDER BY i)
                               FROM generate_series(1, 3) i");
        assert_eq!(got, "99999/active/t/3,99995/active/t/3,99991/active/t/3");
        let n: i64 = q("SELECT count(*) FROM generate_series(1, 200) i, LATERAL billing.debit('a', 1, 'n' || i) d WHERE NOT d.replayed");
        assert_eq!(n, 200);
        // replayed: the same answer through another form
        assert_eq!(q::<String>("SELECT (billing.debit('a', 1, 'n7'))::text"), q::<String>("SELECT d::text FROM billing.debit('a', 1, 'n7') d"));
        assert!(q::<bool>("SELECT (billing.debit('a', 1, 'n7')).replayed"));
        clean();
    }

    /// replay_failed() stays a set: one row per failed event, each replayed through the
    /// composite replay(provider, event_id).
    #[pg_test]
    fn replay_failed_is_still_a_set() {
        setup();
        for id in ["evt_x1", "evt_x2"] {
            assert_eq!(q::<String>(&format!("SELECT status FROM billing.ingest_fetched('s', {})", event_sql(&format!("'{id}'")))), "ignored");
        }
        Spi::run("UPDATE billing.events SET status = 'failed' WHERE event_id IN ('evt_x1', 'evt_x2')").unwrap();
        assert_eq!(
            q::<String>("SELECT string_agg(event_id || ':' || status, ',' ORDER BY event_id) FROM billing.replay_failed()"),
            "evt_x1:ignored,evt_x2:ignored"
        );
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.replay_failed()"), 0);
    }

    /// The declarations: one composite (not a set) with the contract's columns, and the
    /// privileges, SET clauses and comments they had.
    #[pg_test]
    fn declared_as_one_composite_with_their_privileges() {
        const MINE: &str = "('debit', 'settle', 'release', 'refund', 'access', 'charge', 'record_usage', 'ingest', 'replay', 'replay_failed')";
        let rows: String = q(&format!(
            "SELECT string_agg(format('%s|%s|%s|%s|%s|%s', p.oid::regprocedure, p.proretset, p.prorettype::regtype,
                                      pg_get_function_arguments(p.oid),
                                      replace(replace(p.proacl::text, p.proowner::regrole::text || '=', 'owner='), '/' || p.proowner::regrole::text, '/owner'),
                                      p.proconfig), E'\\n' ORDER BY p.oid::regprocedure::text)
               FROM pg_proc p
              WHERE p.pronamespace = 'billing'::regnamespace AND p.proname IN {MINE}"
        ));
        let entry = "OUT entry_id uuid, OUT balance_after bigint, OUT replayed boolean";
        let event = "OUT event_id text, OUT status text, OUT detail text";
        let app = "{owner=X/owner,billing_app=X/owner}";
        let admin = "{owner=X/owner,billing_admin=X/owner}";
        let hook = "{owner=X/owner,billing_webhook=X/owner}";
        let hot = "{\"search_path=pg_catalog, pg_temp\",enable_seqscan=off}";
        let want = [
            format!("billing.access(text,text)|f|record|customer text, feature text DEFAULT NULL::text, OUT allowed boolean, OUT reason text, OUT plan text, OUT status text, OUT balance bigint, OUT period_end timestamp with time zone|{app}|{hot}"),
            format!("billing.charge(text,text,bigint,text)|f|record|customer text, feature text, amount bigint, idempotency_key text, {entry}|{app}|{hot}"),
            format!("billing.debit(text,bigint,text,jsonb)|f|record|customer text, amount bigint, idempotency_key text, metadata jsonb DEFAULT '{{}}'::jsonb, {entry}|{app}|{hot}"),
            format!("billing.ingest(text,jsonb,text)|f|record|endpoint text, headers jsonb, body text, {event}|{hook}|{hot}"),
            format!("billing.record_usage(text,text,bigint,text,timestamp with time zone,uuid)|f|record|customer text, meter text, quantity bigint, idempotency_key text, occurred_at timestamp with time zone DEFAULT NULL::timestamp with time zone, reservation_id uuid DEFAULT NULL::uuid, OUT entry_id uuid, OUT credits bigint, OUT balance_after bigint, OUT replayed boolean|{app}|{hot}"),
            format!("billing.refund(text,uuid,bigint,text)|f|record|customer text, entry_id uuid, amount bigint, idempotency_key text, {entry}|{app}|{hot}"),
            format!("billing.refund(uuid,bigint,text)|f|record|entry_id uuid, amount bigint DEFAULT NULL::bigint, idempotency_key text DEFAULT NULL::text, {entry}|{app}|{hot}"),
            format!("billing.release(text,uuid)|f|record|customer text, reservation_id uuid, {entry}|{app}|{hot}"),
            format!("billing.release(uuid)|f|record|reservation_id uuid, {entry}|{app}|{hot}"),
            format!("billing.replay(text)|f|record|event_id text, {event}|{admin}|{hot}"),
            format!("billing.replay(text,text)|f|record|provider text, event_id text, {event}|{admin}|{hot}"),
            // still a set, of the same columns
            format!("billing.replay_failed()|t|record||{admin}|{{\"search_path=pg_catalog, pg_temp\"}}"),
            format!("billing.settle(text,uuid,bigint)|f|record|customer text, reservation_id uuid, actual bigint, {entry}|{app}|{hot}"),
            format!("billing.settle(uuid,bigint)|f|record|reservation_id uuid, actual bigint, {entry}|{app}|{hot}"),
        ]
        .join("\n");
        assert_eq!(rows, want);
        assert_eq!(
            q::<String>("SELECT pg_get_function_result('billing.replay_failed()'::regprocedure)"),
            "TABLE(event_id text, status text, detail text)"
        );
        // every one but the replay(event_id) wrapper has its comment, as before
        let comments: String = q(&format!(
            "SELECT string_agg(p.oid::regprocedure::text, ',' ORDER BY p.oid::regprocedure::text) FROM pg_proc p
              WHERE p.pronamespace = 'billing'::regnamespace AND p.proname IN {MINE} AND obj_description(p.oid, 'pg_proc') IS NULL"
        ));
        assert_eq!(comments, "billing.replay(text)");
        assert!(q::<bool>("SELECT obj_description('billing.debit(text,bigint,text,jsonb)'::regprocedure, 'pg_proc') LIKE 'Takes credits now%'"));
        // billing.ingest_fetched (sql/webhooks.sql) answers through the same entry
        assert_eq!(
            q::<String>("SELECT format('%s|%s', proretset, pg_get_function_arguments(oid)) FROM pg_proc WHERE oid = 'billing.ingest_fetched(text,text)'::regprocedure"),
            format!("f|endpoint text, body text, {event}")
        );
    }

    /// While a database still has the 0.8.0 declarations (`RETURNS TABLE ... ROWS 1`, a
    /// set: between installing the new library and `ALTER EXTENSION billing UPDATE`), the
    /// same entry point answers its one row in every form a set allows.
    #[pg_test]
    fn entry_point_serves_the_old_set_declaration() {
        setup();
        Spi::run(
            "CREATE FUNCTION pg_temp.old_debit(customer text, amount bigint, idempotency_key text, metadata jsonb DEFAULT '{}')
             RETURNS TABLE (entry_id uuid, balance_after bigint, replayed boolean)
             VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp ROWS 1
             LANGUAGE c AS '$libdir/billing', 'billing_debit'",
        )
        .unwrap();
        assert_eq!(q::<i64>("SELECT balance_after FROM pg_temp.old_debit('a', 1, 'o1')"), 99999);
        assert_eq!(q::<i64>("SELECT count(*) FROM (SELECT pg_temp.old_debit('a', 1, 'o' || i) FROM generate_series(2, 4) i) s"), 3);
        assert_eq!(q::<String>("SELECT string_agg(d.balance_after::text, ',' ORDER BY i) FROM generate_series(5, 6) i, LATERAL pg_temp.old_debit('a', 1, 'o' || i) d"), "99995,99994");
        assert_eq!(q::<i64>("SELECT (pg_temp.old_debit('a', 1, 'o7')).balance_after"), 99993);
        assert_eq!(state("SELECT * FROM pg_temp.old_debit('a', 1000000, 'o8')"), "BL001");
        assert_eq!(bal("a"), 99993);
        clean();
    }
}
