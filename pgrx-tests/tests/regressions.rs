//! The smallest reproductions of bugs the model test found, each asserting the correct
//! behaviour (SPEC section 1). Time is `billing.clock`, in seconds after 2030-01-01 UTC, one
//! transaction at each instant (`at`).
mod common;

use common::*;
use postgres::GenericClient;

const S: i64 = 1_000_000;

fn entry(c: &mut impl GenericClient, sql: &str) -> (String, i64, bool) {
    let r = c.query_one(&format!("SELECT entry_id::text, balance_after, replayed FROM {sql}"), &[]).unwrap_or_else(|e| panic!("{sql}: {}", msg(&e)));
    (r.get(0), r.get(1), r.get(2))
}

fn uuid(c: &mut impl GenericClient, sql: &str) -> String {
    c.query_one(&format!("SELECT ({sql})::text"), &[]).unwrap_or_else(|e| panic!("{sql}: {}", msg(&e))).get(0)
}

fn balance(c: &mut impl GenericClient, customer: &str) -> i64 {
    scalar_i64(c, &format!("SELECT billing.balance('{customer}')"))
}

/// A replay returns the first call's result. When a release, settle or refund gives
/// credits back to a grant that has expired, they expire at once and the first call
/// reports the balance after that; its replay must report the same.
#[test]
fn replay_after_credits_returned_to_an_expired_grant() {
    let db = TestDb::new("reg_replay");
    let mut c = db.connect();
    let mut t = at(&mut c, 0);
    let c0 = &mut t;
    for cust in ["rel", "set", "ref"] {
        expect_ok(c0, &format!("SELECT billing.grant('{cust}', 100, 'g', expires_at => '{}')", ts(10 * S)));
    }
    let rid_rel = uuid(c0, "SELECT billing.reserve('rel', 60, 'h', '1000 seconds')");
    let rid_set = uuid(c0, "SELECT billing.reserve('set', 60, 'h', '1000 seconds')");
    let (debit, _, _) = entry(c0, "billing.debit('ref', 60, 'd')");
    t.commit().unwrap();
    let mut t = at(&mut c, 20 * S); // the grants have expired, the holds are still active
    let c1 = &mut t;

    let first = entry(c1, &format!("billing.release('{rid_rel}')"));
    assert_eq!((first.1, first.2), (0, false), "release: the 60 came back to an expired grant");
    let again = entry(c1, &format!("billing.release('{rid_rel}')"));
    assert_eq!((again.0.as_str(), again.1, again.2), (first.0.as_str(), first.1, true), "release replay");

    let first = entry(c1, &format!("billing.settle('{rid_set}', 10)"));
    assert_eq!((first.1, first.2), (0, false), "settle: the 50 not consumed came back to an expired grant");
    let again = entry(c1, &format!("billing.settle('{rid_set}', 10)"));
    assert_eq!((again.0.as_str(), again.1, again.2), (first.0.as_str(), first.1, true), "settle replay");

    let first = entry(c1, &format!("billing.refund('{debit}')"));
    assert_eq!((first.1, first.2), (0, false), "refund: the 60 came back to an expired grant");
    let again = entry(c1, &format!("billing.refund('{debit}')"));
    assert_eq!((again.0.as_str(), again.1, again.2), (first.0.as_str(), first.1, true), "refund replay");
    t.commit().unwrap();
    verify_clean(&mut c);
}

/// A hold that lapses gives its credits back to the grant they came from; if that grant
/// has expired by then, or expires later, those credits expire with it. When the hold had
/// drained the grant (remaining 0), the credits must still expire, not stay spendable.
#[test]
fn lapsed_hold_returns_to_a_drained_grant_that_expires() {
    let db = TestDb::new("reg_lapse");
    let mut c = db.connect();
    let mut t = at(&mut c, 0);
    // a: the hold lapses at 50 s, the grant expires at 100 s.
    expect_ok(&mut t, &format!("SELECT billing.grant('a', 100, 'g', expires_at => '{}')", ts(100 * S)));
    expect_ok(&mut t, "SELECT billing.reserve('a', 100, 'h', '50 seconds')");
    // b: the grant expires at 50 s, the hold lapses at 100 s.
    expect_ok(&mut t, &format!("SELECT billing.grant('b', 100, 'g', expires_at => '{}')", ts(50 * S)));
    expect_ok(&mut t, "SELECT billing.reserve('b', 100, 'h', '100 seconds')");

    t.commit().unwrap();
    let mut t = at(&mut c, 75 * S);
    assert_eq!(balance(&mut t, "a"), 100, "a: the hold lapsed at 50 s, the grant is live until 100 s");
    assert_eq!(balance(&mut t, "b"), 0, "b: the grant expired at 50 s under the hold");
    t.commit().unwrap();

    let mut t = at(&mut c, 200 * S);
    let c2 = &mut t;
    for cust in ["a", "b"] {
        assert_eq!(balance(c2, cust), 0, "{cust}: every credit of the grant has expired");
        expect_code(c2, &format!("SELECT billing.debit('{cust}', 1, 'd')"), "BL001");
        assert_eq!(scalar_i64(c2, &format!("SELECT billing.balance_at('{cust}', '{}')", ts(200 * S))), 0);
    }
    expect_ok(c2, "SELECT billing.maintenance()");
    for cust in ["a", "b"] {
        assert_eq!(balance(c2, cust), 0, "{cust} after maintenance");
        assert_eq!(scalar_i64(c2, &format!("SELECT remaining FROM billing.grants WHERE customer = '{cust}'")), 0);
    }
    t.commit().unwrap();
    verify_clean(&mut c);
}
