//! The test clock holds for one transaction (src/clock.rs): behind a transaction-mode
//! pooler a session-level value would stay on a pooled server connection and date the
//! next client's entries. And `verify()` reports entries dated after now.
mod common;
use common::*;

fn clock(c: &mut postgres::Client) -> String {
    c.query_one("SELECT current_setting('billing.clock')", &[]).unwrap().get(0)
}

#[test]
fn the_test_clock_cannot_outlive_its_transaction() {
    let db = TestDb::new("clock_scope");
    let mut c = db.connect();
    // Before this backend has loaded billing the setting is a placeholder nothing checks:
    // a value set then, in a transaction that ends, is discarded when billing loads.
    c.batch_execute("SET billing.clock = '2030-01-01'").unwrap();
    expect_ok(&mut c, "SELECT billing.grant('early', 10, 'g')");
    assert_eq!(clock(&mut c), "");
    assert_eq!(scalar_i64(&mut c, "SELECT count(*) FROM billing.journal WHERE at > now() + interval '1 day'"), 0);
    // once loaded, outside a transaction block: refused, not silently dropped
    match c.batch_execute("SET billing.clock = '2030-01-01'") {
        Err(e) => assert!(msg(&e).contains("one transaction only"), "{}", msg(&e)),
        Ok(()) => panic!("a session-level billing.clock was taken"),
    }
    match c.batch_execute("SELECT set_config('billing.clock', '2030-01-01', false)") {
        Err(e) => assert_eq!(sqlstate(&e), "25000"),
        Ok(()) => panic!("set_config outside a transaction was taken"),
    }
    // nor from a role's or database's settings, which every new session would take
    expect_code(&mut c, "ALTER ROLE CURRENT_USER SET billing.clock = '2030-01-01'", "25000");
    expect_code(&mut c, &format!("ALTER DATABASE {} SET billing.clock = '2030-01-01'", db.name), "25000");
    // SET LOCAL: that transaction only
    c.batch_execute("BEGIN; SET LOCAL billing.clock = '2030-01-01 00:00:00+00'").unwrap();
    assert_eq!(scalar_i64(&mut c, "SELECT extract(year FROM billing._clock_now())::int8"), 2030);
    c.batch_execute("COMMIT").unwrap();
    assert_eq!(clock(&mut c), "");
    // a plain SET in a block holds in it, and is reset when the block commits
    c.batch_execute("BEGIN; SET billing.clock = '2030-01-01 00:00:00+00'").unwrap();
    expect_ok(&mut c, "SELECT billing.grant('a', 10, 'g')");
    assert_eq!(clock(&mut c), "2030-01-01 00:00:00+00");
    c.batch_execute("COMMIT").unwrap();
    assert_eq!(clock(&mut c), "", "a session-level SET outlived its transaction");
    assert!(scalar_i64(&mut c, "SELECT extract(year FROM billing._clock_now())::int8") < 2030);
    // ... and in an implicit block (several statements in one query string)
    c.batch_execute("SET billing.clock = '2030-01-02 00:00:00+00'; SELECT billing.grant('b', 10, 'g')").unwrap();
    assert_eq!(clock(&mut c), "");
    // a rolled-back SET goes too, as any
    c.batch_execute("BEGIN; SET billing.clock = '2030-01-03'; ROLLBACK").unwrap();
    assert_eq!(clock(&mut c), "");
    // RESET and the empty value are always accepted
    expect_ok(&mut c, "RESET billing.clock; SET billing.clock = ''");

    // The entries those transactions wrote are dated 2030: after now, which verify()
    // reports, customer by customer and entry by entry.
    let rows = c.query("SELECT customer, detail FROM billing.verify() WHERE check_name = 'future_entry' ORDER BY customer", &[]).unwrap();
    let got: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!((got[0].0.as_str(), got[1].0.as_str()), ("a", "b"));
    let entry: String = c.query_one("SELECT entry_id::text FROM billing.journal WHERE customer = 'a'", &[]).unwrap().get(0);
    assert!(got[0].1.starts_with(&format!("entry {entry} is dated 2030-01-01")), "{}", got[0].1);
    // at a clock past them, they are not in the future
    let mut t = at(&mut c, 86_400 * 1_000_000 * 3);
    assert_eq!(scalar_i64(&mut t, "SELECT count(*) FROM billing.verify()"), 0);
}
