//! Roles and privileges (SPEC section 5), as real login roles connecting on their own:
//! what billing_app, billing_reader, billing_admin, billing_webhook and a plain role may
//! and may not do, the journal's append-only rule even for a superuser, and a
//! search_path attack that must not reach inside the ledger's functions.
mod common;

use common::*;
use postgres::Client;

/// Login roles created for one test, dropped at the end (after the test's database).
struct Roles {
    names: Vec<String>,
}

impl Roles {
    fn create(specs: &[(&str, &str)]) -> Roles {
        let mut c = connect_config(&server_config());
        let mut names = vec![];
        for (tag, member_of) in specs {
            let name = format!("it_{tag}_{}", std::process::id());
            c.batch_execute(&format!("DROP ROLE IF EXISTS {name}")).unwrap();
            c.batch_execute(&format!("CREATE ROLE {name} LOGIN")).unwrap();
            if !member_of.is_empty() {
                c.batch_execute(&format!("GRANT {member_of} TO {name}")).unwrap();
            }
            names.push(name);
        }
        Roles { names }
    }
    fn name(&self, tag: &str) -> &str {
        let n = format!("it_{tag}_");
        self.names.iter().find(|x| x.starts_with(&n)).unwrap()
    }
}

impl Drop for Roles {
    fn drop(&mut self) {
        if let Ok(mut c) = server_config().connect(postgres::NoTls) {
            for n in &self.names {
                let _ = c.batch_execute(&format!("DROP ROLE IF EXISTS {n}"));
            }
        }
    }
}

fn one_uuid(c: &mut Client, sql: &str) -> String {
    c.query_one(&format!("SELECT ({sql})::text"), &[]).unwrap_or_else(|e| panic!("{sql}: {}", msg(&e))).get(0)
}

#[test]
fn roles_get_exactly_their_rights() {
    let roles = Roles::create(&[
        ("app", "billing_app"),
        ("reader", "billing_reader"),
        ("admin", "billing_admin"),
        ("webhook", "billing_webhook"),
        ("plain", ""),
    ]);
    let db = TestDb::new("roles");
    let mut su = db.connect();
    expect_ok(&mut su, "SELECT billing.grant('cust', 1000, 'seed')");

    // billing_app: the ledger functions, nothing else.
    let mut app = db.connect_as(roles.name("app"));
    expect_ok(&mut app, "SELECT billing.grant('cust', 100, 'app-g')");
    let entry = one_uuid(&mut app, "SELECT entry_id FROM billing.debit('cust', 50, 'app-d')");
    let rid = one_uuid(&mut app, "SELECT billing.reserve('cust', 30, 'app-r')");
    expect_ok(&mut app, &format!("SELECT billing.extend('{rid}', '1 hour')"));
    expect_ok(&mut app, &format!("SELECT billing.settle('{rid}', 20)"));
    let rid2 = one_uuid(&mut app, "SELECT billing.reserve('cust', 5, 'app-r2')");
    expect_ok(&mut app, &format!("SELECT billing.release('{rid2}')"));
    expect_ok(&mut app, &format!("SELECT billing.refund('{entry}', 10)"));
    assert_eq!(scalar_i64(&mut app, "SELECT billing.balance('cust')"), 1000 + 100 - 50 - 20 + 10);
    expect_ok(&mut app, "SELECT billing.balance_at('cust', now())");
    for sql in [
        "SELECT * FROM billing.journal",
        "SELECT * FROM billing.customers",
        "SELECT * FROM billing.grants",
        "SELECT * FROM billing.reservations",
        "SELECT * FROM billing.grant_status",
        "UPDATE billing.journal SET amount = 0",
        "DELETE FROM billing.journal",
        "TRUNCATE billing.journal",
        "INSERT INTO billing.journal (customer, seq, entry_id, at, kind, amount, balance_after, accounts, deltas) \
         VALUES ('cust', 999, gen_random_uuid(), now(), 'grant', 1000000, 1000000, '{}', '{}')",
        "UPDATE billing.customers SET balance = 1000000",
        "SELECT billing.set_overdraft('cust', 1000)",
        "SELECT billing.set_frozen('cust', false)",
        "SELECT billing.maintenance()",
        "SELECT * FROM billing.verify()",
        "SET LOCAL billing.clock = '2099-01-01'", // the test clock is for superusers only
    ] {
        expect_code(&mut app, sql, "42501");
    }

    // billing_reader: the journal, the views, verify; no ledger changes.
    let mut reader = db.connect_as(roles.name("reader"));
    assert!(scalar_i64(&mut reader, "SELECT count(*) FROM billing.journal") >= 6);
    assert!(scalar_i64(&mut reader, "SELECT count(*) FROM billing.grant_status") >= 2);
    assert_eq!(scalar_i64(&mut reader, "SELECT count(*) FROM billing.verify()"), 0);
    expect_ok(&mut reader, "SELECT billing.balance('cust')");
    for sql in [
        "SELECT billing.debit('cust', 1, 'reader-d')",
        "SELECT billing.grant('cust', 1, 'reader-g')",
        "SELECT billing.reserve('cust', 1, 'reader-r')",
        &format!("SELECT billing.refund('{entry}', 1)"),
        "SELECT * FROM billing.customers",
        "UPDATE billing.journal SET amount = 0",
        "DELETE FROM billing.journal",
        "SELECT billing.maintenance()",
    ] {
        expect_code(&mut reader, sql, "42501");
    }

    // billing_admin: everything the others can, plus policy and maintenance; the journal
    // stays append-only.
    let mut admin = db.connect_as(roles.name("admin"));
    expect_ok(&mut admin, "SELECT billing.set_overdraft('cust', 500)");
    expect_ok(&mut admin, "SELECT billing.maintenance()");
    expect_ok(&mut admin, "SELECT billing.debit('cust', 1, 'admin-d')");
    assert!(scalar_i64(&mut admin, "SELECT count(*) FROM billing.customers") >= 1);
    assert_eq!(scalar_i64(&mut admin, "SELECT count(*) FROM billing.verify()"), 0);
    for sql in [
        "UPDATE billing.journal SET amount = 0",
        "DELETE FROM billing.journal",
        "TRUNCATE billing.journal",
        "UPDATE billing.customers SET balance = 0",
    ] {
        expect_code(&mut admin, sql, "42501");
    }
    expect_ok(&mut admin, "SELECT billing.set_overdraft('cust', 0)");

    // billing_webhook: inbox and ingest only, so no ledger function.
    let mut hook = db.connect_as(roles.name("webhook"));
    for sql in [
        "SELECT billing.debit('cust', 1, 'hook-d')",
        "SELECT billing.grant('cust', 1, 'hook-g')",
        "SELECT billing.balance('cust')",
        "SELECT * FROM billing.journal",
    ] {
        expect_code(&mut hook, sql, "42501");
    }

    // A plain role: nothing at all.
    let mut plain = db.connect_as(roles.name("plain"));
    for sql in [
        "SELECT billing.balance('cust')",
        "SELECT billing.debit('cust', 1, 'plain-d')",
        "SELECT billing.grant('cust', 1, 'plain-g')",
        &format!("SELECT billing.refund('{entry}')"),
        "SELECT * FROM billing.journal",
        "SELECT * FROM billing.grant_status",
        "SELECT * FROM billing.verify()",
        "SELECT billing.maintenance()",
    ] {
        expect_code(&mut plain, sql, "42501");
    }

    // Even a superuser cannot rewrite the journal.
    for sql in [
        "UPDATE billing.journal SET amount = amount",
        "DELETE FROM billing.journal WHERE customer = 'cust'",
        "TRUNCATE billing.journal",
        "TRUNCATE billing.journal CASCADE",
    ] {
        expect_code(&mut su, sql, "42501");
    }
    assert_eq!(scalar_i64(&mut su, "SELECT billing.balance('cust')"), 1000 + 100 - 50 - 20 + 10 - 1);
    verify_clean(&mut su);
    drop((app, reader, admin, hook, plain, su));
    drop(db);
    drop(roles);
}

/// `ingest_fetched` stores unsigned events: only `billing_sync` (and the owner) may call
/// it; the receiver, the application, the reader and the admin may not.
#[test]
fn only_billing_sync_ingests_fetched_events() {
    let roles = Roles::create(&[
        ("sync", "billing_sync"),
        ("hook2", "billing_webhook"),
        ("app2", "billing_app"),
        ("reader2", "billing_reader"),
        ("admin2", "billing_admin"),
    ]);
    let db = TestDb::new("sync_role");
    let mut su = db.connect();
    expect_ok(&mut su, "SELECT billing.add_endpoint('s', 'stripe')");
    let event = |id: &str| {
        format!(
            "SELECT status FROM billing.ingest_fetched('s', '{{\"id\":\"{id}\",\"object\":\"event\",\"type\":\"checkout.session.completed\",\"created\":1900000000,\"data\":{{\"object\":{{\"id\":\"cs_{id}\",\"mode\":\"payment\",\"payment_status\":\"paid\",\"payment_intent\":\"pi_{id}\",\"client_reference_id\":\"fetched\",\"metadata\":{{\"credits\":\"70\"}}}}}}}}')"
        )
    };
    for tag in ["hook2", "app2", "reader2", "admin2"] {
        let mut c = db.connect_as(roles.name(tag));
        expect_code(&mut c, &event("evt_denied"), "42501");
    }
    let mut sync = db.connect_as(roles.name("sync"));
    assert_eq!(sync.query_one(&event("evt_sync"), &[]).unwrap().get::<_, String>(0), "applied");
    assert_eq!(sync.query_one(&event("evt_sync"), &[]).unwrap().get::<_, String>(0), "duplicate");
    assert_eq!(scalar_i64(&mut sync, "SELECT fetched FROM billing.sync_status WHERE endpoint = 's'"), 1);
    for sql in ["SELECT billing.balance('fetched')", "SELECT * FROM billing.events", "SELECT billing.debit('fetched', 1, 'k')"] {
        expect_code(&mut sync, sql, "42501");
    }
    assert_eq!(scalar_i64(&mut su, "SELECT billing.balance('fetched')"), 70);
    verify_clean(&mut su);
    drop((sync, su));
    drop(db);
    drop(roles);
}

/// An application role puts look-alikes first on its search_path: a `debit` function and
/// `=` operators on text and uuid that always say true (and record that they ran). Its
/// own unqualified SQL is hijacked, as it asked for; billing.* is not: the pinned
/// search_path of the ledger's SECURITY DEFINER functions never resolves to them.
#[test]
fn search_path_attack_does_not_reach_the_ledger() {
    let roles = Roles::create(&[("evil", "billing_app")]);
    let db = TestDb::new("roles_path");
    let evil = roles.name("evil").to_string();
    let mut su = db.connect();
    su.batch_execute(&format!("GRANT CREATE ON DATABASE {} TO {evil}", db.name)).unwrap();
    expect_ok(&mut su, "SELECT billing.grant('victim', 100, 'g')");
    expect_ok(&mut su, "SELECT billing.grant('bystander', 100, 'g')");

    let mut c = db.connect_as(&evil);
    c.batch_execute(
        r#"
        CREATE SCHEMA evil;
        CREATE TABLE evil.hits (who text, what text);
        GRANT USAGE ON SCHEMA evil TO PUBLIC;
        GRANT INSERT ON evil.hits TO PUBLIC;
        CREATE FUNCTION evil.debit(customer text, amount bigint, idempotency_key text, metadata jsonb DEFAULT '{}')
            RETURNS TABLE (entry_id uuid, balance_after bigint, replayed boolean)
            LANGUAGE sql AS $$ INSERT INTO evil.hits VALUES (current_user, 'debit');
                               SELECT '00000000-0000-0000-0000-000000000000'::uuid, 999999::bigint, false $$;
        CREATE FUNCTION evil.text_eq(text, text) RETURNS boolean LANGUAGE plpgsql
            AS $$ BEGIN INSERT INTO evil.hits VALUES (current_user, 'text ='); RETURN true; END $$;
        CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.text_eq);
        CREATE FUNCTION evil.uuid_eq(uuid, uuid) RETURNS boolean LANGUAGE plpgsql
            AS $$ BEGIN INSERT INTO evil.hits VALUES (current_user, 'uuid ='); RETURN true; END $$;
        CREATE OPERATOR evil.= (LEFTARG = uuid, RIGHTARG = uuid, FUNCTION = evil.uuid_eq);
        CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE sql AS $$ SELECT '2000-01-01'::timestamptz $$;
        CREATE FUNCTION evil.unnest(anyarray) RETURNS SETOF anyelement LANGUAGE sql
            AS $$ INSERT INTO evil.hits VALUES (current_user, 'unnest'); SELECT NULL::text::anyelement WHERE false $$;
        SET search_path = evil, pg_catalog, billing, public;
        "#,
    )
    .unwrap_or_else(|e| panic!("setting up the look-alikes: {}", msg(&e)));

    // The trap is armed for the role's own unqualified SQL.
    let hijacked: i64 = c.query_one("SELECT balance_after FROM debit('victim', 1, 'x')", &[]).unwrap().get(0);
    assert_eq!(hijacked, 999_999);
    assert!(c.query_one("SELECT 'a'::text = 'b'::text", &[]).unwrap().get::<_, bool>(0));
    c.batch_execute("TRUNCATE evil.hits").unwrap();

    // The ledger is untouched by it.
    let r = c.query_one("SELECT entry_id::text, balance_after, replayed FROM billing.debit('victim', 30, 'k1')", &[]).unwrap();
    assert_eq!((r.get::<_, i64>(1), r.get::<_, bool>(2)), (70, false));
    let entry: String = r.get(0);
    let r = c.query_one("SELECT balance_after, replayed FROM billing.debit('victim', 30, 'k1')", &[]).unwrap();
    assert_eq!((r.get::<_, i64>(0), r.get::<_, bool>(1)), (70, true));
    expect_code(&mut c, "SELECT billing.debit('victim', 31, 'k1')", "BL002");
    expect_code(&mut c, "SELECT billing.debit('victim', 71, 'k2')", "BL001");
    expect_code(&mut c, "SELECT billing.debit('nobody', 1, 'k3')", "BL003");
    let rid: String = c.query_one("SELECT billing.reserve('victim', 20, 'k4')::text", &[]).unwrap().get(0);
    expect_ok(&mut c, &format!("SELECT billing.settle('{rid}', 5)"));
    expect_ok(&mut c, &format!("SELECT billing.refund('{entry}', 10)"));
    assert_eq!(scalar_i64(&mut c, "SELECT billing.balance('victim')"), 100 - 30 - 5 + 10);
    assert_eq!(scalar_i64(&mut c, "SELECT billing.balance('bystander')"), 100);
    assert_eq!(scalar_i64(&mut c, "SELECT count(*) FROM evil.hits"), 0, "a look-alike ran inside a billing function");

    // A superuser with the same search_path: verify and the views are not hijacked either.
    su.batch_execute("SET search_path = evil, pg_catalog, billing, public").unwrap();
    assert_eq!(scalar_i64(&mut su, "SELECT count(*) FROM billing.verify()"), 0);
    assert_eq!(scalar_i64(&mut su, "SELECT count(*) FROM billing.grant_status WHERE customer OPERATOR(pg_catalog.=) 'victim'"), 1);
    expect_ok(&mut su, "SELECT billing.maintenance()");
    su.batch_execute("SET search_path = DEFAULT").unwrap();
    assert_eq!(scalar_i64(&mut su, "SELECT count(*) FROM evil.hits"), 0, "a look-alike ran inside a billing function or view");
    verify_clean(&mut su);
    drop((c, su));
    drop(db);
    drop(roles);
}
