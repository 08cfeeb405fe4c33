//! Races between real connections (one thread, one connection each). No sleeps: threads
//! start together at a barrier and run until their work is done.
mod common;

use common::*;
use postgres::Client;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Barrier};

type Debit = (String, i64, bool); // entry_id, balance_after, replayed

fn debit(c: &mut Client, customer: &str, amount: i64, key: &str) -> Result<Debit, postgres::Error> {
    c.query_one("SELECT entry_id::text, balance_after, replayed FROM billing.debit($1, $2, $3)", &[&customer, &amount, &key])
        .map(|r| (r.get(0), r.get(1), r.get(2)))
}

fn grant(c: &mut Client, customer: &str, amount: i64, key: &str) {
    c.execute("SELECT billing.grant($1, $2, $3)", &[&customer, &amount, &key]).unwrap_or_else(|e| panic!("grant: {}", msg(&e)));
}

fn balance(c: &mut Client, customer: &str) -> i64 {
    c.query_one("SELECT billing.balance($1)", &[&customer]).unwrap().get(0)
}

/// (a) 16 sessions drain one customer with fresh keys until even a debit of 1 is refused:
/// together they debit exactly the initial balance, and the balances they were told form
/// one chain (each debit saw the one before it).
#[test]
fn parallel_debits_never_overspend() {
    let db = TestDb::new("conc_drain");
    let mut c = db.connect();
    let initial = 5_000;
    grant(&mut c, "drain", 2_000, "g1");
    grant(&mut c, "drain", 1_500, "g2");
    c.execute("SELECT billing.grant('drain', 1500, 'g3', expires_at => now() + interval '1 day', priority => 3)", &[]).unwrap();

    let results = race(&db, 16, |t, c| {
        let mut rng = Rng::new(0xD1A1 + t as u64);
        let mut ok: Vec<(i64, i64)> = vec![];
        let mut amount = rng.range(1, 40);
        let mut n = 0;
        loop {
            n += 1;
            match debit(c, "drain", amount, &format!("t{t}-{n}")) {
                Ok((_, after, replayed)) => {
                    assert!(!replayed, "a fresh key was replayed");
                    assert!(after >= 0, "balance went below zero without an overdraft: {after}");
                    ok.push((amount, after));
                    amount = rng.range(1, 40);
                }
                Err(e) if sqlstate(&e) == "BL001" => {
                    if amount == 1 {
                        return ok; // nothing left at all
                    }
                    amount /= 2;
                }
                Err(e) => panic!("unexpected error: {}", msg(&e)),
            }
        }
    });
    let mut all: Vec<(i64, i64)> = results.into_iter().flatten().collect();
    let total: i64 = all.iter().map(|x| x.0).sum();
    assert_eq!(total, initial, "the threads debited {total}, the customer had {initial}");
    all.sort_by_key(|x| std::cmp::Reverse(x.1));
    let mut before = initial;
    for (amount, after) in &all {
        assert_eq!(*after, before - amount, "balance_after values do not form one serial chain");
        before = *after;
    }
    assert_eq!(balance(&mut c, "drain"), 0);
    let n: i64 = scalar_i64(&mut c, "SELECT count(*) FROM billing.journal WHERE customer = 'drain' AND kind = 'debit'");
    assert_eq!(n as usize, all.len(), "journal debits vs successful calls");
    verify_clean(&mut c);
    println!("drain: {} debits by 16 sessions, total {total}", all.len());
}

/// (b) 8 sessions send the same request with the same key at once: one does it, the
/// others get its result with replayed = true. Rounds cycle through debit, reserve,
/// grant and a keyless refund.
#[test]
fn same_key_at_once_applies_once() {
    let db = TestDb::new("conc_samekey");
    let mut c = db.connect();
    grant(&mut c, "same", 100_000, "seed");
    let rounds = 24;
    for round in 0..rounds {
        let before = balance(&mut c, "same");
        let key = format!("same-{round}");
        match round % 4 {
            0 => {
                let k = key.clone();
                let r = race(&db, 8, move |_, c| debit(c, "same", 7, &k).map_err(|e| msg(&e)));
                let r: Vec<Debit> = r.into_iter().map(|x| x.expect("same-key debit failed")).collect();
                assert_eq!(r.iter().filter(|x| !x.2).count(), 1, "round {round}: not exactly one original: {r:?}");
                assert_eq!(r.iter().map(|x| &x.0).collect::<HashSet<_>>().len(), 1, "round {round}: different entries: {r:?}");
                assert_eq!(r.iter().map(|x| x.1).collect::<HashSet<_>>().len(), 1, "round {round}: different balance_after: {r:?}");
                assert_eq!(balance(&mut c, "same"), before - 7, "round {round}");
            }
            1 => {
                let k = key.clone();
                let r = race(&db, 8, move |_, c| {
                    c.query_one("SELECT billing.reserve('same', 11, $1, '1 hour')::text", &[&k]).map(|r| r.get::<_, String>(0)).map_err(|e| msg(&e))
                });
                let ids: HashSet<String> = r.into_iter().map(|x| x.expect("same-key reserve failed")).collect();
                assert_eq!(ids.len(), 1, "round {round}: holds {ids:?}");
                assert_eq!(balance(&mut c, "same"), before - 11, "round {round}");
                let id = ids.into_iter().next().unwrap();
                c.execute("SELECT billing.release($1::text::uuid)", &[&id]).unwrap();
            }
            2 => {
                // to a customer that does not exist yet, every other time
                let cust = if round % 8 == 2 { format!("fresh-{round}") } else { "same".to_string() };
                let (k, cu) = (key.clone(), cust.clone());
                let r = race(&db, 8, move |_, c| {
                    c.query_one("SELECT billing.grant($1, 13, $2)::text", &[&cu, &k]).map(|r| r.get::<_, String>(0)).map_err(|e| msg(&e))
                });
                let ids: HashSet<String> = r.into_iter().map(|x| x.expect("same-key grant failed")).collect();
                assert_eq!(ids.len(), 1, "round {round}: grants {ids:?}");
                if cust == "same" {
                    assert_eq!(balance(&mut c, "same"), before + 13, "round {round}");
                } else {
                    assert_eq!(balance(&mut c, &cust), 13, "round {round}");
                    assert_eq!(balance(&mut c, "same"), before, "round {round}");
                }
            }
            _ => {
                let (entry, _, _) = debit(&mut c, "same", 50, &key).unwrap();
                let r = race(&db, 8, move |_, c| {
                    c.query_one("SELECT entry_id::text, balance_after, replayed FROM billing.refund($1::text::uuid, 20)", &[&entry])
                        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1), r.get::<_, bool>(2)))
                        .map_err(|e| msg(&e))
                });
                let r: Vec<Debit> = r.into_iter().map(|x| x.expect("keyless refund retry failed")).collect();
                assert_eq!(r.iter().filter(|x| !x.2).count(), 1, "round {round}: not exactly one original refund: {r:?}");
                assert_eq!(r.iter().map(|x| &x.0).collect::<HashSet<_>>().len(), 1, "round {round}: {r:?}");
                assert_eq!(balance(&mut c, "same"), before - 30, "round {round}");
            }
        }
    }
    let keys = scalar_i64(&mut c, "SELECT count(*) FROM billing.journal WHERE idempotency_key LIKE 'same-%'");
    assert_eq!(keys, rounds as i64, "one journal entry per key");
    verify_clean(&mut c);
}

/// (c) Holds reserved, extended, settled below, at and above their amount, and released,
/// by 6 sessions while 2 more debit: the balance is exactly the initial one less what was
/// settled and debited, and no hold is left active.
#[test]
fn reserve_settle_storm() {
    let db = TestDb::new("conc_storm");
    let mut c = db.connect();
    let initial = 60_000;
    grant(&mut c, "storm", 40_000, "g1");
    c.execute("SELECT billing.grant('storm', 20000, 'g2', expires_at => now() + interval '7 days')", &[]).unwrap();

    let spent = race(&db, 8, |t, c| {
        let mut rng = Rng::new(0x5707 + t as u64);
        let mut spent = 0i64;
        for i in 0..40 {
            let key = format!("t{t}-{i}");
            if t >= 6 {
                let a = rng.range(1, 100);
                match debit(c, "storm", a, &key) {
                    Ok(_) => spent += a,
                    Err(e) if sqlstate(&e) == "BL001" => {}
                    Err(e) => panic!("debit: {}", msg(&e)),
                }
                continue;
            }
            let amount = rng.range(1, 300);
            let rid: String = match c.query_one("SELECT billing.reserve('storm', $1, $2, '10 minutes')::text", &[&amount, &key]) {
                Ok(r) => r.get(0),
                Err(e) if sqlstate(&e) == "BL001" => continue,
                Err(e) => panic!("reserve: {}", msg(&e)),
            };
            if rng.pct(25) {
                c.execute("SELECT billing.extend($1::text::uuid, '20 minutes')", &[&rid]).unwrap_or_else(|e| panic!("extend: {}", msg(&e)));
            }
            let actual = match rng.below(4) {
                0 => None, // release
                1 => Some(rng.range(0, amount)),
                2 => Some(amount),
                _ => Some(amount + rng.range(1, 50)),
            };
            match actual {
                None => {
                    c.execute("SELECT billing.release($1::text::uuid)", &[&rid]).unwrap_or_else(|e| panic!("release: {}", msg(&e)));
                }
                Some(a) => match c.execute("SELECT billing.settle($1::text::uuid, $2)", &[&rid, &a]) {
                    Ok(_) => spent += a,
                    Err(e) if sqlstate(&e) == "BL001" && a > amount => {
                        // the hold stays: give it back
                        c.execute("SELECT billing.release($1::text::uuid)", &[&rid]).unwrap();
                    }
                    Err(e) => panic!("settle: {}", msg(&e)),
                },
            }
        }
        spent
    });
    let spent: i64 = spent.iter().sum();
    assert_eq!(balance(&mut c, "storm"), initial - spent);
    assert_eq!(scalar_i64(&mut c, "SELECT count(*) FROM billing.reservations WHERE status = 'active'"), 0);
    verify_clean(&mut c);
    println!("storm: spent {spent} of {initial}");
}

/// (d) Multi-statement transactions debiting two customers. In one agreed order, many
/// sessions never deadlock (no 40P01). In opposite orders it is a lock-order inversion
/// (each debit holds its customer's lock until commit, as any committed balance change
/// must): two sessions that each hold their first customer deadlock for certain;
/// PostgreSQL breaks it with 40P01 for exactly one of them, whose transaction is undone
/// whole; the other commits; the loser's retry goes through. No credit is lost or doubled.
#[test]
fn two_customers_in_transactions() {
    let db = TestDb::new("conc_order");
    let mut c = db.connect();
    grant(&mut c, "ca", 100_000, "g");
    grant(&mut c, "cb", 100_000, "g");
    let per_thread = 25;

    // Many sessions, one agreed order: never a deadlock.
    race(&db, 6, move |t, c| {
        for i in 0..per_thread {
            let mut tx = c.transaction().unwrap();
            for cust in ["ca", "cb"] {
                if let Err(e) = tx.execute("SELECT billing.debit($1, 1, $2)", &[&cust, &format!("s{t}-{i}")]) {
                    panic!("{cust} in a sorted transaction: {}", msg(&e));
                }
            }
            tx.commit().unwrap_or_else(|e| panic!("commit: {}", msg(&e)));
        }
    });
    let n = 6 * per_thread as i64;

    // Opposite orders, both first locks held before either takes its second.
    let both_hold = Arc::new(Barrier::new(2));
    let outcome = race(&db, 2, move |t, c| {
        let order = if t == 0 { ["ca", "cb"] } else { ["cb", "ca"] };
        let key = format!("o{t}");
        let mut tx = c.transaction().unwrap();
        tx.execute("SELECT billing.debit($1, 5, $2)", &[&order[0], &key]).unwrap_or_else(|e| panic!("{}", msg(&e)));
        both_hold.wait();
        let r = tx.execute("SELECT billing.debit($1, 5, $2)", &[&order[1], &key]).map(|_| ()).and_then(|_| tx.commit());
        match r {
            Ok(()) => "committed".to_string(),
            Err(e) => {
                let code = sqlstate(&e);
                assert_eq!(code, "40P01", "only a deadlock error is expected: {}", msg(&e));
                // the whole transaction was undone: retry it whole
                let mut tx = c.transaction().unwrap();
                for cust in order {
                    tx.execute("SELECT billing.debit($1, 5, $2)", &[&cust, &key]).unwrap_or_else(|e| panic!("retry: {}", msg(&e)));
                }
                tx.commit().unwrap();
                code
            }
        }
    });
    let mut outcome = outcome;
    outcome.sort();
    assert_eq!(outcome, vec!["40P01".to_string(), "committed".to_string()], "exactly one of the two is chosen as the deadlock victim");
    for cust in ["ca", "cb"] {
        assert_eq!(balance(&mut c, cust), 100_000 - n - 10, "{cust}: every transaction counted once, all or nothing");
        let rows: i64 = c.query_one("SELECT count(*) FROM billing.journal WHERE customer = $1 AND kind = 'debit'", &[&cust]).unwrap().get(0);
        assert_eq!(rows, n + 2);
    }
    verify_clean(&mut c);
}

/// (e) Under REPEATABLE READ (and SERIALIZABLE), concurrent debits of one customer fail
/// only with 40001, never BL001 while credits remain; retried with the same key they
/// all go through and spend exactly the balance. The same for a slotted customer (4
/// slots), whose last debits gather.
#[test]
fn repeatable_read_debits_fail_only_retryably() {
    for (level, slots) in [("REPEATABLE READ", 1), ("SERIALIZABLE", 1), ("REPEATABLE READ", 4), ("SERIALIZABLE", 4)] {
        let tag = format!("conc_{}_{slots}", if level == "SERIALIZABLE" { "ser" } else { "rr" });
        let db = TestDb::new(&tag);
        let mut c = db.connect();
        let (threads, each, amount) = (8usize, 20usize, 10i64);
        let initial = (threads * each) as i64 * amount;
        grant(&mut c, "rr", initial - 500, "g1");
        c.execute("SELECT billing.grant('rr', 500, 'g2', expires_at => now() + interval '1 day')", &[]).unwrap();
        if slots > 1 {
            c.execute("SELECT billing.set_slots('rr', $1)", &[&slots]).unwrap();
        }

        let lvl = level.to_string();
        let codes = race(&db, threads, move |t, c| {
            let mut codes: HashMap<String, u32> = HashMap::new();
            for i in 0..each {
                let key = format!("t{t}-{i}");
                loop {
                    let r = (|| -> Result<Debit, postgres::Error> {
                        let mut tx = c.build_transaction().isolation_level(level_of(&lvl)).start()?;
                        let r = tx.query_one("SELECT entry_id::text, balance_after, replayed FROM billing.debit('rr', $1, $2)", &[&amount, &key])?;
                        tx.commit()?;
                        Ok((r.get(0), r.get(1), r.get(2)))
                    })();
                    match r {
                        Ok((_, _, replayed)) => {
                            assert!(!replayed, "a debit that failed with 40001 left its key behind");
                            break;
                        }
                        Err(e) => {
                            let code = sqlstate(&e);
                            *codes.entry(code.clone()).or_default() += 1;
                            assert_eq!(code, "40001", "{lvl}: only serialization failures are expected, got {}", msg(&e));
                        }
                    }
                }
            }
            codes
        });
        let retries: u32 = codes.iter().flat_map(|m| m.values()).sum();
        assert_eq!(balance(&mut c, "rr"), 0, "{level}");
        match debit(&mut c, "rr", 1, "one-more") {
            Err(e) => assert_eq!(sqlstate(&e), "BL001"),
            Ok(r) => panic!("{level}: debit beyond the balance succeeded: {r:?}"),
        }
        verify_clean(&mut c);
        println!("{level}, {slots} slot(s): {} debits, {retries} retried after 40001", threads * each);
    }
}

fn level_of(s: &str) -> postgres::IsolationLevel {
    match s {
        "SERIALIZABLE" => postgres::IsolationLevel::Serializable,
        _ => postgres::IsolationLevel::RepeatableRead,
    }
}

/// (f) A debit waiting for a customer that another transaction holds gives up at
/// `lock_timeout` with 55P03 (retryable, never BL001), having changed nothing; the lock is
/// visible in `pg_locks` as an advisory lock while held; a debit of another customer does
/// not wait at all.
#[test]
fn lock_wait_surfaces_as_lock_timeout() {
    let db = TestDb::new("conc_timeout");
    let mut c = db.connect();
    grant(&mut c, "held", 1_000, "g");
    grant(&mut c, "free", 1_000, "g");
    let mut holder = db.connect();
    let mut tx = holder.transaction().unwrap();
    tx.execute("SELECT billing.debit('held', 10, 'h1')", &[]).unwrap();

    let mut waiter = db.connect();
    waiter.batch_execute("SET lock_timeout = '200ms'").unwrap();
    let advisory: i64 = waiter.query_one("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted", &[]).unwrap().get(0);
    assert!(advisory >= 1, "the holder's customer lock shows in pg_locks");
    let e = debit(&mut waiter, "held", 20, "w1").expect_err("the customer is held by another transaction");
    assert_eq!(sqlstate(&e), "55P03", "{}", msg(&e));
    debit(&mut waiter, "free", 20, "w1").expect("another customer does not wait");

    tx.commit().unwrap();
    assert_eq!(balance(&mut c, "held"), 990, "only the holder's debit counted");
    assert!(!debit(&mut waiter, "held", 20, "w1").unwrap().2, "the timed-out debit left no trace: its key is free");
    let problems: i64 = c.query_one("SELECT count(*) FROM billing.verify()", &[]).unwrap().get(0);
    assert_eq!(problems, 0);
}

/// (g) Under REPEATABLE READ, a debit whose snapshot predates a grant another session
/// committed would see too small a balance: it is refused with 40001 (retry), not BL001,
/// and goes through when retried.
#[test]
fn repeatable_read_debit_after_a_concurrent_grant() {
    let db = TestDb::new("conc_rr_grant");
    let mut c = db.connect();
    grant(&mut c, "rg", 100, "g1");
    let mut a = db.connect();
    {
        let mut tx = a.build_transaction().isolation_level(postgres::IsolationLevel::RepeatableRead).start().unwrap();
        tx.query_one("SELECT 1", &[]).unwrap(); // takes the transaction's snapshot
        grant(&mut c, "rg", 1_000, "g2");
        let e = tx.query_one("SELECT * FROM billing.debit('rg', 500, 'd1')", &[]).expect_err("the snapshot predates the grant");
        assert_eq!(sqlstate(&e), "40001", "{}", msg(&e));
    }
    let (_, after, replayed) = debit(&mut a, "rg", 500, "d1").unwrap();
    assert_eq!((after, replayed), (600, false), "retried in a new transaction, the debit goes through once");
    verify_clean(&mut c);
}

/// (h) `maintenance()` skips a customer that another transaction holds (it does not wait
/// for it), writes the others' expiries, and writes the held one's on a later run.
#[test]
fn maintenance_skips_a_held_customer() {
    let db = TestDb::new("conc_maint");
    let mut c = db.connect();
    for cust in ["held", "free"] {
        c.execute("SELECT billing.grant($1, 100, 'g', expires_at => now() + interval '1 hour')", &[&cust]).unwrap();
    }
    let mut holder = db.connect();
    let mut tx = holder.transaction().unwrap();
    tx.execute("SELECT billing.set_overdraft('held', 0)", &[]).unwrap(); // holds the customer's lock

    c.batch_execute("SET lock_timeout = '2s'").unwrap();
    // two hours on: the grants have expired (the test clock holds for one transaction)
    let later = |c: &mut postgres::Client| -> i64 {
        let mut t = c.transaction().unwrap();
        t.execute("SELECT set_config('billing.clock', (now() + interval '2 hours')::text, true)", &[]).unwrap();
        let written: i64 = t.query_one("SELECT billing.maintenance()", &[]).unwrap().get(0);
        t.commit().unwrap();
        written
    };
    let written = later(&mut c);
    assert_eq!(written, 1, "only the customer nobody holds is written");
    let expiries = |c: &mut postgres::Client, cust: &str| -> i64 {
        c.query_one("SELECT count(*) FROM billing.journal WHERE customer = $1 AND kind = 'expiry'", &[&cust]).unwrap().get(0)
    };
    assert_eq!((expiries(&mut c, "held"), expiries(&mut c, "free")), (0, 1));

    tx.commit().unwrap();
    let written = later(&mut c);
    assert_eq!(written, 1, "the held customer's expiry, once it is free");
    assert_eq!((expiries(&mut c, "held"), expiries(&mut c, "free")), (1, 1));
    verify_clean(&mut c);
}

/// (i) A slotted customer (4 slots) drained by 8 sessions in pairs that send the same
/// keys at the same time, so a key's two calls race (one applies, one replays) while
/// slots run short and gather: each key has one entry and one result, the debits add up
/// to exactly the credits there were, and `verify()` is clean.
#[test]
fn slotted_customer_drains_exactly() {
    let db = TestDb::new("conc_slots");
    let mut c = db.connect();
    grant(&mut c, "hot", 3_000, "g1");
    c.execute("SELECT billing.grant('hot', 1000, 'g2', expires_at => now() + interval '1 day')", &[]).unwrap();
    c.execute("SELECT billing.set_slots('hot', 4)", &[]).unwrap();
    let results = race(&db, 8, |t, c| {
        let pair = t / 2;
        let mut rng = Rng::new(0x5107 + pair as u64); // both of a pair draw the same amounts
        let mut ok: Vec<(String, i64, String)> = vec![]; // key, amount, entry
        let mut n = 0;
        let mut ones = false;
        loop {
            n += 1;
            let (key, amount) = if ones { (format!("p{pair}-one-{n}"), 1) } else { (format!("p{pair}-{n}"), rng.range(1, 30)) };
            match debit(c, "hot", amount, &key) {
                Ok((entry, after, _)) => {
                    assert!(after >= 0, "a slot went below zero: {after}");
                    ok.push((key, amount, entry));
                }
                Err(e) if sqlstate(&e) == "BL001" => {
                    if ones {
                        return ok;
                    }
                    ones = true;
                }
                Err(e) => panic!("unexpected error: {}", msg(&e)),
            }
        }
    });
    let mut entries: HashMap<String, (i64, String)> = HashMap::new();
    for (key, amount, entry) in results.into_iter().flatten() {
        let first = entries.entry(key.clone()).or_insert((amount, entry.clone()));
        assert_eq!(first, &(amount, entry), "key {key} got two results");
    }
    let total: i64 = entries.values().map(|x| x.0).sum();
    assert_eq!(total, 4_000, "the debits do not add up to the credits");
    assert_eq!(balance(&mut c, "hot"), 0);
    let keyed = scalar_i64(
        &mut c,
        "SELECT count(*) FROM billing.journal j JOIN billing.customers c USING (customer)
          WHERE coalesce(c.slot_of, c.customer) = 'hot' AND j.kind = 'debit'",
    );
    assert_eq!(keyed, entries.len() as i64, "one journal entry per key");
    let gathered = scalar_i64(&mut c, "SELECT count(*) FROM billing.journal WHERE customer = 'hot' AND kind = 'transfer'");
    assert!(gathered > 0, "no slot ever ran short: the test did not gather");
    verify_clean(&mut c);
}
