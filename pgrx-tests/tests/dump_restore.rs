//! `pg_dump -Fc` of a database with ledger state, `pg_restore` into a new database: the
//! ledger comes back whole (verify clean, same balances, journal, grants, holds, keys),
//! the journal is still append-only, and the restored ledger keeps working.
mod common;

use common::*;
use postgres::Client;
use std::process::Command;

const HOUR: i64 = 3_600_000_000;

fn rows_text(c: &mut Client, sql: &str) -> Vec<String> {
    // every column as text, so tables compare without knowing their types
    let q = format!("SELECT t::text FROM ({sql}) t");
    c.query(&q, &[]).unwrap_or_else(|e| panic!("{sql}: {}", msg(&e))).iter().map(|r| r.get(0)).collect()
}

fn build_state(c: &mut Client) -> (String, String) {
    let mut t = at(c, 0);
    let c0 = &mut t;
    let exp = ts(2 * HOUR);
    expect_ok(c0, &format!("SELECT billing.grant('d1', 1000, 'g1', 'purchase', '{exp}', 2)"));
    expect_ok(c0, "SELECT billing.grant('d1', 500, 'g2')");
    expect_ok(c0, "SELECT billing.debit('d1', 300, 'd1', '{\"req\": 1}')");
    let settled: String = c0.query_one("SELECT billing.reserve('d1', 200, 'h1', '1 hour')::text", &[]).unwrap().get(0);
    expect_ok(c0, &format!("SELECT billing.settle('{settled}', 150)"));
    let active: String = c0.query_one("SELECT billing.reserve('d1', 100, 'h2', '3 hours')::text", &[]).unwrap().get(0);
    let entry: String = c0.query_one("SELECT entry_id::text FROM billing.debit('d1', 40, 'd2')", &[]).unwrap().get(0);
    expect_ok(c0, &format!("SELECT billing.refund('{entry}', 15)"));
    expect_ok(c0, "SELECT billing.grant('d2', 50, 'g1')");
    expect_ok(c0, "SELECT billing.set_overdraft('d2', 100)");
    expect_ok(c0, "SELECT billing.debit('d2', 120, 'over')");
    expect_ok(c0, "SELECT billing.grant('d3', 10, 'g1')");
    expect_ok(c0, "SELECT billing.set_frozen('d3', true)");
    // a slotted customer: its slot accounts, mirrors and transfers come back too
    expect_ok(c0, &format!("SELECT billing.grant('d4', 400, 'g1', 'promo', '{exp}')"));
    expect_ok(c0, "SELECT billing.grant('d4', 400, 'g2'); SELECT billing.set_slots('d4', 3)");
    expect_ok(c0, "SELECT billing.debit('d4', 5, 'a'), billing.debit('d4', 7, 'b'), billing.debit('d4', 300, 'c')");
    t.commit().unwrap();
    let mut t = at(c, HOUR);
    expect_ok(&mut t, "SELECT billing.debit('d1', 1, 'later')"); // the settled hold's ttl has passed
    t.commit().unwrap();
    (active, entry)
}

fn snapshot(c: &mut Client) -> Vec<Vec<String>> {
    vec![
        rows_text(c, "SELECT customer, seq, entry_id, at, kind, amount, balance_after, idempotency_key, grant_id, reservation_id, ref_entry, accounts, deltas, metadata FROM billing.journal ORDER BY customer, seq"),
        rows_text(c, "SELECT * FROM billing.grants ORDER BY customer, id"),
        rows_text(c, "SELECT * FROM billing.reservations ORDER BY customer, id"),
        rows_text(c, "SELECT customer, balance, od, overdraft_limit, frozen, seq, last_at, next_event_at, slots, slot_of FROM billing.customers ORDER BY customer"),
        rows_text(c, "SELECT * FROM billing.grant_status ORDER BY customer, grant_id"),
    ]
}

fn balances(c: &mut Client, t: i64) -> Vec<(String, i64)> {
    let mut tx = at(c, t);
    tx.query("SELECT customer, billing.balance(customer) FROM billing.customers WHERE slot_of IS NULL ORDER BY customer", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn tool(db: &TestDb, name: &str, args: &[&str]) {
    let (host, port) = db.host_port();
    let out = Command::new(pg_bin(name))
        .args(["-h", &host, "-p", &port.to_string(), "-U", &db.user()])
        .args(args)
        .env_remove("PGPASSWORD")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", pg_bin(name).display()));
    assert!(
        out.status.success(),
        "{name} {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dump_and_restore_keep_the_ledger() {
    let src = TestDb::new("dump_src");
    let mut a = src.connect();
    let (active, entry) = build_state(&mut a);
    verify_clean(&mut a);

    let file = std::env::temp_dir().join(format!("billing-it-{}.dump", std::process::id()));
    let file_s = file.display().to_string();
    tool(&src, "pg_dump", &["-Fc", "-f", &file_s, "-d", &src.name]);
    let dst = TestDb::empty("dump_dst");
    tool(&dst, "pg_restore", &["--exit-on-error", "-d", &dst.name, &file_s]);
    let _ = std::fs::remove_file(&file);
    let mut b = dst.connect();

    verify_clean(&mut b);
    assert_eq!(snapshot(&mut a), snapshot(&mut b), "the restored tables differ from the dumped ones");
    let counts = "SELECT customer, count(*) FROM billing.journal GROUP BY customer ORDER BY customer";
    assert_eq!(rows_text(&mut a, counts), rows_text(&mut b, counts));
    for t in [HOUR, 2 * HOUR, 3 * HOUR + 1] {
        let (x, y) = (balances(&mut a, t), balances(&mut b, t));
        assert_eq!(x, y, "balances at {}", ts(t));
        assert!(!x.is_empty());
    }
    for cust in ["d1", "d2", "d3", "d4"] {
        for t in [0, HOUR / 2, HOUR] {
            let q = format!("SELECT billing.balance_at('{cust}', '{}')", ts(t));
            assert_eq!(scalar_i64(&mut a, &q), scalar_i64(&mut b, &q), "{q}");
        }
    }

    // Still append-only, for everyone.
    for sql in ["UPDATE billing.journal SET amount = amount + 1", "DELETE FROM billing.journal", "TRUNCATE billing.journal"] {
        expect_code(&mut b, sql, "42501");
    }
    // The roles' privileges came back with the extension.
    let privs = "SELECT (has_function_privilege('billing_app', 'billing.debit(text,bigint,text,jsonb)', 'EXECUTE')::int \
                 + has_table_privilege('billing_reader', 'billing.journal', 'SELECT')::int \
                 + (NOT has_table_privilege('billing_app', 'billing.journal', 'SELECT'))::int)::bigint";
    assert_eq!(scalar_i64(&mut b, privs), 3);

    // And it keeps working: old keys replay, the active hold settles, the frozen customer
    // stays frozen, new entries continue the sequence.
    let mut t = at(&mut b, HOUR + 1);
    let r = t.query_one("SELECT entry_id::text, replayed FROM billing.debit('d1', 300, 'd1', '{\"req\": 1}')", &[]).unwrap();
    let orig: String =
        a.query_one("SELECT entry_id::text FROM billing.journal WHERE customer = 'd1' AND idempotency_key = 'd1'", &[]).unwrap().get(0);
    assert_eq!((r.get::<_, String>(0), r.get::<_, bool>(1)), (orig, true));
    expect_code(&mut t, "SELECT billing.debit('d1', 301, 'd1')", "BL002");
    expect_code(&mut t, "SELECT billing.debit('d3', 1, 'x')", "BL004");
    let before = scalar_i64(&mut t, "SELECT billing.balance('d1')");
    expect_ok(&mut t, &format!("SELECT billing.settle('{active}', 60)"));
    assert_eq!(scalar_i64(&mut t, "SELECT billing.balance('d1')"), before + 40);
    expect_ok(&mut t, &format!("SELECT billing.refund('{entry}')")); // the rest of it
    expect_code(&mut t, &format!("SELECT billing.refund('{entry}', 1, 'again')"), "22023");
    t.commit().unwrap();
    let mut t = at(&mut b, 4 * HOUR);
    expect_ok(&mut t, "SELECT billing.debit('d1', 5, 'after-expiry')");
    expect_ok(&mut t, "SELECT billing.maintenance()");
    t.commit().unwrap();
    verify_clean(&mut b);
}
