//! The outbox's wake-up under real concurrency. Writers notify only while a consumer
//! waits (holds an unexpired lease, 0.9.0), so the guarantee to prove is the other half: a
//! consumer that found the outbox empty and sleeps is always woken by the next row. Four
//! writers write rows through the ledger (`set_frozen`: an `access_changed` row each; the
//! code that writes a row wakes consumers, there is no trigger), a third of them in
//! transactions that read the outbox before they commit, while one
//! consumer claims, acknowledges and, on an empty claim, sleeps until a notification. A
//! sleep that ends without one while writers are still writing, or rows left pending
//! once they are done, is a lost wake-up.
mod common;
use common::*;
use postgres::fallible_iterator::FallibleIterator;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const WRITERS: usize = 4;
const PER: usize = 150;
/// Far longer than any pause between rows while the writers run.
const SLEEP: Duration = Duration::from_secs(10);
/// How far the writers may run ahead of the consumer (rows written, not acknowledged):
/// a small lead makes the consumer drain the outbox and sleep again and again.
const LEAD: usize = 2;

/// Rows written and rows acknowledged, for the writers to keep within `LEAD`.
#[derive(Default)]
struct Pace {
    counts: Mutex<(usize, usize)>,
    acked: Condvar,
}

/// Free-running writers, at most `LEAD` rows ahead: a writer is often between its insert
/// and its commit when the consumer finds the outbox empty (the claim waits and claims
/// once more).
#[test]
fn rows_committing_during_an_empty_claim_are_claimed() {
    let (sleeps, _) = run("outbox_race", false);
    eprintln!("race: {sleeps} sleeps");
}

/// Writers released only by an empty claim: every round of rows meets a consumer that
/// is about to sleep or asleep, and must wake it.
#[test]
fn a_sleeping_consumer_is_woken_by_every_row() {
    let (sleeps, woken) = run("outbox_wake", true);
    assert!(sleeps >= 50 && woken >= 50, "the wake-up was exercised {sleeps} times, {woken} notified");
}

/// Returns (empty claims, of which ended by a notification).
fn run(tag: &str, release_on_empty: bool) -> (usize, usize) {
    let db = TestDb::new(tag);
    let mut cons = db.connect();
    cons.batch_execute("LISTEN billing").unwrap();
    for w in 0..WRITERS {
        expect_ok(&mut cons, &format!("SELECT billing.grant('w{w}', 10, 'g')"));
    }
    let finished = Arc::new(AtomicUsize::new(0));
    let pace = Arc::new(Pace::default());
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let mut c = db.connect();
            let finished = finished.clone();
            let pace = pace.clone();
            thread::spawn(move || {
                for i in 0..PER {
                    {
                        let g = pace.counts.lock().unwrap();
                        let mut g = pace.acked.wait_while(g, |(written, acked)| *written >= *acked + LEAD).unwrap();
                        g.0 += 1;
                    }
                    // frozen, unfrozen, ...: each call changes the access reason, one row
                    let row = format!("SELECT billing.set_frozen('w{w}', {})", i % 2 == 0);
                    if i % 3 == 0 {
                        // holds the row's writer lock over another statement before the
                        // commit: the window in which a consumer finds the outbox empty
                        // and must wait for it
                        c.batch_execute(&format!("BEGIN; {row}; SELECT count(*) FROM billing.outbox; COMMIT")).unwrap();
                    } else {
                        c.batch_execute(&row).unwrap();
                    }
                }
                finished.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();

    let (mut acked, mut sleeps, mut woken) = (0usize, 0usize, 0usize);
    let deadline = Instant::now() + Duration::from_secs(300);
    while acked < WRITERS * PER {
        assert!(Instant::now() < deadline, "consumer gave up with {acked} rows acknowledged");
        let ids: Vec<i64> = cons.query("SELECT id FROM billing.claim_outbox(500)", &[]).unwrap().iter().map(|r| r.get(0)).collect();
        if ids.is_empty() {
            sleeps += 1;
            if release_on_empty {
                pace.counts.lock().unwrap().1 = acked;
                pace.acked.notify_all();
            }
            let got = cons.notifications().timeout_iter(SLEEP).next().unwrap();
            if got.is_some() {
                woken += 1;
                while cons.notifications().iter().next().unwrap().is_some() {}
                continue;
            }
            // Writers still at it after the whole sleep wrote rows during it.
            let writing = finished.load(Ordering::SeqCst) < WRITERS;
            assert!(!writing, "lost wake-up: no notification for {SLEEP:?} while the writers were writing");
            let pending = scalar_i64(&mut cons, "SELECT count(*) FROM billing.outbox WHERE acked_at IS NULL");
            assert_eq!(pending, 0, "lost wake-up: rows pending after the writers finished, and no notification");
            continue;
        }
        let n = scalar_i64(
            &mut cons,
            &format!(
                "SELECT count(*) FROM unnest('{{{}}}'::bigint[]) i WHERE billing.ack_outbox(i)",
                ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
            ),
        );
        assert_eq!(n as usize, ids.len());
        acked += ids.len();
        if !release_on_empty {
            pace.counts.lock().unwrap().1 = acked;
            pace.acked.notify_all();
        }
    }
    for w in writers {
        w.join().unwrap();
    }
    assert_eq!(scalar_i64(&mut cons, "SELECT count(*) FROM billing.outbox WHERE acked_at IS NULL"), 0);
    assert_eq!(scalar_i64(&mut cons, "SELECT count(*) FROM billing.outbox"), (WRITERS * PER) as i64);
    eprintln!("{tag}: {acked} rows acknowledged; {sleeps} empty claims, {woken} woken by a notification");
    (sleeps, woken)
}
