//! Issue 5 under real concurrency: many sessions charging one customer near zero
//! credits and near a rate limit. No overspend, no request through the limit beyond
//! what it allows, and each outbox row exactly once.
mod common;
use common::*;
use std::sync::{Arc, Barrier};
use std::thread;

/// `threads` sessions each try `per` charges at once (a pinned clock: the bucket does
/// not refill during the race); returns the SQLSTATEs seen ('ok' for success).
fn storm(db: &TestDb, threads: usize, per: usize, feature: &str, tag: &str) -> Vec<String> {
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let mut c = db.connect();
            let barrier = barrier.clone();
            let feature = feature.to_string();
            let tag = tag.to_string();
            thread::spawn(move || {
                barrier.wait();
                (0..per)
                    .map(|i| {
                        // at 2030-01-01 00:00 (ts(0)), in a transaction of its own
                        let mut tx = at(&mut c, 0);
                        match tx.query_one("SELECT balance_after FROM billing.charge('hot', $1, 1, $2)", &[&feature, &format!("{tag}-{t}-{i}")]) {
                            Ok(_) => {
                                tx.commit().unwrap();
                                "ok".to_string()
                            }
                            Err(e) => sqlstate(&e),
                        }
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
}

fn count(v: &[String], code: &str) -> usize {
    v.iter().filter(|s| *s == code).count()
}

#[test]
fn charges_near_zero_and_near_the_limit() {
    let db = TestDb::new("acc_conc");
    let mut c = db.connect();
    c.batch_execute(
        "SET LOCAL billing.clock = '2030-01-01 00:00:00+00';
         SELECT billing.define_plan('pro', '{chat,images}', 0, '3 days', 'price_pro');
         SELECT billing.grant('hot', 150, 'g');
         INSERT INTO billing.subscriptions (customer, provider, subscription_id, status, plan, current_period_end,
             status_created, status_event, updated_at)
         VALUES ('hot', 'stripe', 'sub_hot', 'active', 'pro', '2031-01-01', 0, '', now());
         -- the access answer kept on the customer's row, as the webhook path keeps it
         UPDATE billing.customers c SET sub_counts_until = k.counts_until, sub_allowed_until = k.allowed_until, sub_plan = k.plan
           FROM billing._access_kept k WHERE k.customer = c.customer AND c.customer = 'hot';
         SELECT billing.define_limit('pro', 'chat', 40, '1 hour');
         SELECT billing.set_low_balance('hot', 100);
         SELECT billing.set_auto_topup('hot', 50, 1000, 5, 3);",
    )
    .unwrap();

    // Near the rate limit: 16 sessions x 5 tries of a feature limited to 40 per hour.
    let r = storm(&db, 16, 5, "chat", "l");
    assert!(r.iter().all(|s| s == "ok" || s == "BL006"), "unexpected: {r:?}");
    assert_eq!(count(&r, "ok"), 40, "exactly the limit gets through");
    assert_eq!(count(&r, "BL006"), 40);

    // Near zero: 110 credits left, 16 sessions x 10 tries of 1 credit (no limit on images).
    let r = storm(&db, 16, 10, "images", "z");
    assert!(r.iter().all(|s| s == "ok" || s == "BL001"), "unexpected: {r:?}");
    assert_eq!(count(&r, "ok"), 110, "exactly the balance is spent, never more");
    assert_eq!(scalar_i64(&mut at(&mut c, 0), "SELECT billing.balance('hot')"), 0);

    // Each threshold was crossed once: one low_balance row, one top-up request.
    assert_eq!(scalar_i64(&mut c, "SELECT count(*) FROM billing.outbox WHERE kind = 'low_balance'"), 1);
    assert_eq!(scalar_i64(&mut c, "SELECT count(*) FROM billing.outbox WHERE kind = 'topup_due'"), 1);
    let key: String = c.query_one("SELECT idempotency_key FROM billing.outbox WHERE kind = 'topup_due'", &[]).unwrap().get(0);
    assert_eq!(key, "topup:hot:2030-01:1");

    // Consumers racing over the outbox each get disjoint rows (4 consumers, 1 row each).
    let rows = scalar_i64(&mut c, "SELECT count(*) FROM billing.outbox") as usize;
    let barrier = Arc::new(Barrier::new(4));
    let claimed: Vec<i64> = (0..4)
        .map(|_| {
            let mut c = db.connect();
            let b = barrier.clone();
            thread::spawn(move || {
                b.wait();
                let mut tx = c.transaction().unwrap();
                let ids: Vec<i64> = tx.query("SELECT id FROM billing.claim_outbox(1)", &[]).unwrap().iter().map(|r| r.get(0)).collect();
                tx.commit().unwrap();
                ids
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let mut sorted = claimed.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), claimed.len(), "a row claimed twice: {claimed:?}");
    assert_eq!(claimed.len(), rows.min(4));
    verify_clean(&mut c);
}
