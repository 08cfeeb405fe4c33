//! Batches (`billing.debit_many`, `billing.record_usage_many`) from many connections at
//! once: batches that share customers, named in random and in opposite orders, never
//! deadlock (a batch locks its customers in one order before applying an item), and the
//! ledger adds up.
mod common;

use common::*;
use std::collections::HashMap;

const CUSTOMERS: usize = 12;
const RICH: i64 = 1_000_000;
/// The last customer is short: its items are refused (BL001) once it runs out.
const POOR: i64 = 300;

fn customer(k: usize) -> String {
    format!("c{k:02}")
}

/// One batch's item: customer, amount (or quantity: the meter is one credit per unit),
/// key, and whether it reuses a key this thread's earlier batch got through.
struct Item {
    customer: String,
    amount: i64,
    key: String,
    replay: bool,
}

/// (What each thread debited per customer, fresh items only; refused items; replays.)
type Tally = (HashMap<String, i64>, usize, usize);

/// 8 clients send 40 batches each of 60 items over 12 shared customers, half of the
/// threads naming them in ascending order, half in descending order, with runs of one
/// customer and random picks mixed in; debit_many and record_usage_many alternate, and
/// some items replay earlier keys. No call fails (no 40P01), every refusal is the poor
/// customer's BL001, every balance is its grant less what was debited, and verify() is
/// empty.
#[test]
fn batches_sharing_customers_never_deadlock() {
    let db = TestDb::new("batches");
    let mut c = db.connect();
    for k in 0..CUSTOMERS {
        let amount = if k == CUSTOMERS - 1 { POOR } else { RICH };
        c.execute("SELECT billing.grant($1, $2, 'g')", &[&customer(k), &amount]).unwrap();
    }
    c.batch_execute("SELECT billing.define_meter('tokens', 1, 1, now() - interval '1 day')").unwrap();

    let tallies: Vec<Tally> = race(&db, 8, |t, c| {
        let mut rng = Rng::new(0xBA7C4 + t as u64);
        let mut debited: HashMap<String, i64> = HashMap::new();
        let (mut refused, mut replays) = (0, 0);
        // keys of this thread's debits that went through, with their amounts
        let mut done: Vec<(String, i64, String)> = vec![];
        for b in 0..40 {
            let mut items: Vec<Item> = (0..60)
                .map(|i| {
                    let k = if i % 10 < 3 { (b + t) % CUSTOMERS } else { rng.below(CUSTOMERS) };
                    Item { customer: customer(k), amount: rng.range(1, 9), key: format!("t{t}-b{b}-i{i}"), replay: false }
                })
                .collect();
            // opposite orders: half the threads sort ascending, half descending
            items.sort_by(|x, y| if t % 2 == 0 { x.customer.cmp(&y.customer) } else { y.customer.cmp(&x.customer) });
            let usage = b % 2 == 1;
            if !usage && !done.is_empty() {
                for slot in 0..3 {
                    let (cust, amount, key) = done[rng.below(done.len())].clone();
                    items[slot * 7] = Item { customer: cust, amount, key, replay: true };
                }
            }
            let cs: Vec<&str> = items.iter().map(|x| x.customer.as_str()).collect();
            let ks: Vec<&str> = items.iter().map(|x| x.key.as_str()).collect();
            let ns: Vec<i64> = items.iter().map(|x| x.amount).collect();
            let rows = if usage {
                let ms = vec!["tokens"; items.len()];
                c.query("SELECT i, replayed, sqlstate, message FROM billing.record_usage_many($1, $2, $3, $4) ORDER BY i", &[&cs, &ms, &ns, &ks])
            } else {
                c.query("SELECT i, replayed, sqlstate, message FROM billing.debit_many($1, $2, $3)", &[&cs, &ns, &ks])
            }
            .unwrap_or_else(|e| panic!("thread {t} batch {b}: {}", msg(&e)));
            assert_eq!(rows.len(), items.len());
            for (n, r) in rows.iter().enumerate() {
                let i: i32 = r.get(0);
                assert_eq!(i as usize, n + 1, "rows come back in array order");
                let item = &items[n];
                let state: Option<String> = r.get(2);
                match state.as_deref() {
                    None => {
                        let replayed: bool = r.get(1);
                        assert_eq!(replayed, item.replay, "item {i} ({}) replayed={replayed}", item.key);
                        if item.replay {
                            replays += 1;
                        } else {
                            *debited.entry(item.customer.clone()).or_default() += item.amount;
                            if !usage {
                                done.push((item.customer.clone(), item.amount, item.key.clone()));
                            }
                        }
                    }
                    Some("BL001") if item.customer == customer(CUSTOMERS - 1) && !item.replay => refused += 1,
                    Some(s) => panic!("thread {t} batch {b} item {i} ({}): {s} {:?}", item.customer, r.get::<_, Option<String>>(3)),
                }
            }
        }
        (debited, refused, replays)
    });

    let mut total: HashMap<String, i64> = HashMap::new();
    let (mut refused, mut replays) = (0, 0);
    for (d, r, p) in tallies {
        for (k, v) in d {
            *total.entry(k).or_default() += v;
        }
        refused += r;
        replays += p;
    }
    assert!(refused > 0, "the poor customer ran out: some of its items were refused");
    assert!(replays > 0, "some items replayed");
    for k in 0..CUSTOMERS {
        let name = customer(k);
        let granted = if k == CUSTOMERS - 1 { POOR } else { RICH };
        let b: i64 = c.query_one("SELECT billing.balance($1)", &[&name]).unwrap().get(0);
        assert_eq!(b, granted - total.get(&name).copied().unwrap_or(0), "balance of {name}");
    }
    let journal: i64 = scalar_i64(&mut c, "SELECT coalesce(-sum(amount), 0)::bigint FROM billing.journal WHERE kind = 'debit'");
    assert_eq!(journal, total.values().sum::<i64>());
    verify_clean(&mut c);
}
