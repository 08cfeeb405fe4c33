//! The extension on a real Citus cluster: a coordinator and two workers on loopback, the
//! database distributed by `billing.distribute()`. `scripts/citus-test.sh` starts the
//! cluster and runs these (they are `#[ignore]`d otherwise: they need the cluster it makes,
//! named by CITUS_PORTS="coordinator worker1 worker2" and CITUS_DB).
mod common;
mod stripe;

use common::{msg, sqlstate};
use postgres::{Client, Config, NoTls};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};

const SECRET: &str = "whsec_citus_test";

fn ports() -> Vec<u16> {
    let p = std::env::var("CITUS_PORTS").expect("CITUS_PORTS: the coordinator's and the workers' ports (scripts/citus-test.sh)");
    p.split_whitespace().map(|x| x.parse().expect("a port")).collect()
}

fn config(node: usize) -> Config {
    let mut c = Config::new();
    c.host("127.0.0.1").port(ports()[node]).user("postgres").dbname(&std::env::var("CITUS_DB").unwrap_or_else(|_| "postgres".into()));
    c
}

fn node(n: usize) -> Client {
    config(n).connect(NoTls).unwrap_or_else(|e| panic!("node {n}: {e}"))
}

fn nodes() -> Vec<Client> {
    (0..ports().len()).map(node).collect()
}

fn one_i64(c: &mut Client, sql: &str, args: &[&(dyn postgres::types::ToSql + Sync)]) -> i64 {
    c.query_one(sql, args).unwrap_or_else(|e| panic!("{sql}: {}", msg(&e))).get(0)
}

fn balance(c: &mut Client, customer: &str) -> i64 {
    one_i64(c, "SELECT billing.balance($1)", &[&customer])
}

fn debit(c: &mut Client, customer: &str, amount: i64, key: &str) -> Result<(String, i64, bool), postgres::Error> {
    c.query_one("SELECT entry_id::text, balance_after, replayed FROM billing.debit($1, $2, $3)", &[&customer, &amount, &key])
        .map(|r| (r.get(0), r.get(1), r.get(2)))
}

fn ok(c: &mut Client, sql: &str) {
    c.batch_execute(sql).unwrap_or_else(|e| panic!("{sql}: {}", msg(&e)));
}

/// Every row verify() returns, as text.
fn verify(c: &mut Client) -> Vec<String> {
    c.query("SELECT v::text FROM billing.verify() v", &[]).unwrap_or_else(|e| panic!("verify: {}", msg(&e))).iter().map(|r| r.get(0)).collect()
}

/// Runs `f(thread, node client)` on `n` threads spread over the nodes, started together.
fn race<T: Send + 'static>(n: usize, f: impl Fn(usize, &mut Client) -> T + Send + Sync + 'static) -> Vec<T> {
    let k = ports().len();
    common::race_with(move |i| config(i % k), n, f)
}

/// The ledger, usage and access functions through every node, in and out of transaction
/// blocks; a rollback of the application's transaction undoes what it did.
#[test]
#[ignore = "needs the Citus cluster of scripts/citus-test.sh"]
fn ledger_and_usage_through_every_node() {
    let mut cs = nodes();
    ok(&mut cs[0], "SELECT billing.define_meter('citus_tokens', 3, 1000)");
    let mut entries = HashSet::new();
    for (i, c) in cs.iter_mut().enumerate() {
        let cust = format!("node{i}");
        let cust = cust.as_str();
        c.execute("SELECT billing.grant($1, 1000, 'g1')", &[&cust]).unwrap();
        let (e, b, r) = debit(c, cust, 100, "d1").unwrap();
        assert_eq!((b, r), (900, false));
        entries.insert(e.clone());
        // A replay from this node.
        assert_eq!(debit(c, cust, 100, "d1").unwrap(), (e.clone(), 900, true));
        // In the application's transaction: rolled back, then committed.
        ok(c, "BEGIN");
        let (_, b2, _) = debit(c, cust, 50, "d2").unwrap();
        assert_eq!(b2, 850);
        ok(c, "ROLLBACK");
        assert_eq!(balance(c, cust), 900, "a rolled-back debit on node {i} left a trace");
        ok(c, "BEGIN");
        let (e2, b2, _) = debit(c, cust, 50, "d2").unwrap();
        let r1: String = c.query_one("SELECT billing.reserve($1, 200, 'r1')::text", &[&cust]).unwrap().get(0);
        ok(c, "COMMIT");
        entries.insert(e2);
        assert_eq!(b2, 850);
        assert_eq!(balance(c, cust), 650);
        // Customer-qualified hold calls, and the id-only forms (a lookup across shards).
        let rid = r1.clone();
        c.execute("SELECT billing.extend($1, $2::text::uuid, '1 hour')", &[&cust, &rid]).unwrap();
        let b: i64 = c.query_one("SELECT balance_after FROM billing.settle($1, $2::text::uuid, 150)", &[&cust, &rid]).unwrap().get(0);
        assert_eq!(b, 700);
        let r2: String = c.query_one("SELECT billing.reserve($1, 100, 'r2')::text", &[&cust]).unwrap().get(0);
        let b: i64 = c.query_one("SELECT balance_after FROM billing.release($1, $2::text::uuid)", &[&cust, &r2]).unwrap().get(0);
        assert_eq!(b, 700);
        let r3: String = c.query_one("SELECT billing.reserve($1, 10, 'r3')::text", &[&cust]).unwrap().get(0);
        let b: i64 = c.query_one("SELECT balance_after FROM billing.settle($1::text::uuid, 10)", &[&r3]).unwrap().get(0);
        assert_eq!(b, 690);
        // Another customer's reservation is not this one's.
        let err = c.query_one("SELECT * FROM billing.release('nobody', $1::text::uuid)", &[&r2]).unwrap_err();
        assert_eq!(sqlstate(&err), "BL003", "{}", msg(&err));
        // billing.entry() finds the entry by the number its id carries, across shards.
        let found = one_i64(c, "SELECT count(*) FROM billing.entry($1::text::uuid)", &[&e]);
        assert_eq!(found, 1, "billing.entry on node {i}");
        // Refunds, qualified and by id alone.
        let b: i64 = c.query_one("SELECT balance_after FROM billing.refund($1, $2::text::uuid, 40, NULL)", &[&cust, &e]).unwrap().get(0);
        assert_eq!(b, 730);
        let b: i64 = c.query_one("SELECT balance_after FROM billing.refund($1::text::uuid, 10)", &[&e]).unwrap().get(0);
        assert_eq!(b, 740);
        // Usage: 2,500 tokens at 3 credits a 1,000 = 7 now, the half carried.
        let (credits, b): (i64, i64) = c
            .query_one("SELECT credits, balance_after FROM billing.record_usage($1, 'citus_tokens', 2500, 'u1')", &[&cust])
            .map(|r| (r.get(0), r.get(1)))
            .unwrap();
        assert_eq!((credits, b), (7, 733));
        ok(c, "BEGIN");
        c.query_one("SELECT * FROM billing.record_usage($1, 'citus_tokens', 2500, 'u2')", &[&cust]).unwrap();
        ok(c, "ROLLBACK");
        assert_eq!(balance(c, cust), 733);
        let q: i64 = one_i64(c, "SELECT sum(quantity)::int8 FROM billing.usage($1, now() - interval '1 day', now() + interval '1 day')", &[&cust]);
        assert_eq!(q, 2500);
        // Access of a customer without a plan, an unknown customer, and BL003 for a debit.
        // Credits and no plan: allowed; a customer never seen: no_plan.
        let allowed: bool = c.query_one("SELECT allowed FROM billing.access($1)", &[&cust]).unwrap().get(0);
        assert!(allowed);
        let (allowed, reason): (bool, String) =
            c.query_one("SELECT allowed, reason FROM billing.access('never-seen')", &[]).map(|r| (r.get(0), r.get(1))).unwrap();
        assert_eq!((allowed, reason.as_str()), (false, "no_plan"));
        let ca: bool = c.query_one("SELECT billing.can_access('never-seen')", &[]).unwrap().get(0);
        assert!(!ca);
        let err = debit(c, "never-seen", 1, "k").unwrap_err();
        assert_eq!(sqlstate(&err), "BL003");
        let err = debit(c, cust, 1_000_000, "too-much").unwrap_err();
        assert_eq!(sqlstate(&err), "BL001");
    }
    // Entry ids made on different nodes never meet (customer numbers carry the node).
    assert_eq!(entries.len(), 3 * 2);
    let nums: BTreeSet<i64> = cs[0]
        .query("SELECT num FROM billing.customers WHERE customer IN ('node0', 'node1', 'node2')", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(nums.len(), 3, "customer numbers repeat across nodes: {nums:?}");
    assert_eq!(verify(&mut cs[0]), Vec::<String>::new());
}

/// Signed deliveries through every node; plans and access; one payment's two events on two
/// nodes grant once; one event delivered to all nodes at once is applied once.
#[test]
#[ignore = "needs the Citus cluster of scripts/citus-test.sh"]
fn webhooks_plans_and_access_through_every_node() {
    let mut cs = nodes();
    ok(&mut cs[0], &format!("SELECT billing.add_endpoint('citus', 'stripe'); SELECT billing.add_secret('citus', '{SECRET}')"));
    ok(&mut cs[0], "SELECT billing.define_plan('basic', ARRAY['chat'], 1000, '3 days', 'price_basic')");
    // The link from a worker, the subscription's events through the other worker.
    ok(&mut cs[1], "SELECT * FROM billing.link_customer('acme', 'cus_RtAcme00000001')");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/vectors/stripe-flows/");
    for (n, f) in [(2, "a1-customer.subscription.created.json"), (2, "a2-invoice.paid-subscription_create.json")] {
        let body = std::fs::read_to_string(format!("{dir}{f}")).unwrap();
        let status: String = cs[n]
            .query_one("SELECT status FROM billing.ingest('citus', $1::text::jsonb, $2)", &[&stripe::signed_headers(SECRET, &body), &body])
            .unwrap_or_else(|e| panic!("{f}: {}", msg(&e)))
            .get(0);
        assert_eq!(status, "applied", "{f}");
    }
    for c in cs.iter_mut() {
        let (allowed, reason, plan): (bool, String, String) =
            c.query_one("SELECT allowed, reason, plan FROM billing.access('acme', 'chat')", &[]).map(|r| (r.get(0), r.get(1), r.get(2))).unwrap();
        assert_eq!((allowed, reason.as_str(), plan.as_str()), (true, "active", "basic"));
        assert!(c.query_one("SELECT billing.can_access('acme', 'chat')", &[]).unwrap().get::<_, bool>(0));
    }
    assert_eq!(balance(&mut cs[0], "acme"), 1000);
    for (i, c) in cs.iter_mut().enumerate() {
        let b: i64 = c.query_one("SELECT balance_after FROM billing.charge('acme', 'chat', 10, $1)", &[&format!("charge{i}")]).unwrap().get(0);
        assert!(b < 1000);
    }
    assert_eq!(balance(&mut cs[2], "acme"), 970);
    // One payment, its two events through two nodes: one grant.
    let now = stripe::now_unix();
    let a = stripe::checkout_completed("evt_cz_1", "cs_cz_1", "pi_cz_1", "buyer", 500, now);
    let b = stripe::payment_intent_succeeded("evt_cz_2", "pi_cz_1", "buyer", 500, now);
    for (n, body) in [(1, &a), (2, &b)] {
        cs[n].query_one("SELECT status FROM billing.ingest('citus', $1::text::jsonb, $2)", &[&stripe::signed_headers(SECRET, body), body]).unwrap();
    }
    assert_eq!(balance(&mut cs[0], "buyer"), 500);
    // The inbox of a worker: stored and applied cluster-wide.
    let c3 = stripe::checkout_completed("evt_cz_3", "cs_cz_3", "pi_cz_3", "inboxed", 70, now);
    cs[1]
        .execute(
            "INSERT INTO billing.inbox (endpoint, headers, body) VALUES ('citus', $1::text::jsonb, $2)",
            &[&stripe::signed_headers(SECRET, &c3), &c3],
        )
        .unwrap();
    assert_eq!(balance(&mut cs[2], "inboxed"), 70);
    let st: String = cs[0].query_one("SELECT status FROM billing.events WHERE event_id = 'evt_cz_3'", &[]).unwrap().get(0);
    assert_eq!(st, "applied");
    // The same event delivered to every node at once, twice over: applied once.
    let body = Arc::new(stripe::checkout_completed("evt_cz_race", "cs_cz_race", "pi_cz_race", "raced", 300, now));
    let statuses = race(6, move |_, c| -> String {
        c.query_one("SELECT status FROM billing.ingest('citus', $1::text::jsonb, $2)", &[&stripe::signed_headers(SECRET, &body), &*body])
            .unwrap_or_else(|e| panic!("ingest: {}", msg(&e)))
            .get(0)
    });
    let applied = statuses.iter().filter(|s| *s == "applied").count();
    assert_eq!(applied, 1, "statuses {statuses:?}");
    assert!(statuses.iter().all(|s| s == "applied" || s == "duplicate"), "{statuses:?}");
    assert_eq!(balance(&mut cs[0], "raced"), 300);
    // In the application's transaction on a worker: a rolled-back delivery stores nothing.
    let tx = stripe::checkout_completed("evt_cz_tx", "cs_cz_tx", "pi_cz_tx", "txn", 40, now);
    ok(&mut cs[2], "BEGIN");
    cs[2].query_one("SELECT status FROM billing.ingest('citus', $1::text::jsonb, $2)", &[&stripe::signed_headers(SECRET, &tx), &tx]).unwrap();
    ok(&mut cs[2], "ROLLBACK");
    assert_eq!(one_i64(&mut cs[0], "SELECT count(*) FROM billing.events WHERE event_id = 'evt_cz_tx'", &[]), 0);
    // An event for a provider customer not linked yet waits as failed; linking the
    // customer on a worker applies it.
    let waiting = format!(
        r#"{{"id":"evt_cz_wait","object":"event","api_version":"2024-06-20","type":"payment_intent.succeeded","created":{now},"livemode":false,"data":{{"object":{{"id":"pi_cz_wait","object":"payment_intent","status":"succeeded","amount":500,"amount_received":500,"currency":"usd","customer":"cus_CzWait","metadata":{{"credits":"50"}}}}}}}}"#
    );
    let st: String = cs[0]
        .query_one("SELECT status FROM billing.ingest('citus', $1::text::jsonb, $2)", &[&stripe::signed_headers(SECRET, &waiting), &waiting])
        .unwrap()
        .get(0);
    assert_eq!(st, "failed");
    ok(&mut cs[1], "SELECT * FROM billing.link_customer('waiter', 'cus_CzWait')");
    assert_eq!(balance(&mut cs[2], "waiter"), 50);
    // The outbox: written on workers (access changes), claimed from another node.
    let claimed: Vec<i64> = cs[2].query("SELECT id FROM billing.claim_outbox(100)", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert!(!claimed.is_empty(), "no outbox row to claim on worker 2");
    assert!(cs[1].query_one("SELECT billing.ack_outbox($1)", &[&claimed[0]]).unwrap().get::<_, bool>(0));
    assert!(!cs[0].query_one("SELECT billing.ack_outbox($1)", &[&claimed[0]]).unwrap().get::<_, bool>(0));
    // The views, from the coordinator and a worker.
    ok(&mut cs[0], "SELECT billing.set_low_balance('acme', 100000)");
    for c in [0, 2] {
        for v in ["grant_status", "failed_events", "stale_events", "event_lag", "sync_status", "low_balances", "open_holds"] {
            cs[c].query(&format!("SELECT * FROM billing.{v}"), &[]).unwrap_or_else(|e| panic!("billing.{v} on node {c}: {}", msg(&e)));
        }
        let low = one_i64(&mut cs[c], "SELECT count(*) FROM billing.low_balances WHERE customer = 'acme'", &[]);
        assert_eq!(low, 1, "low_balances on node {c}");
    }
    // Replay and maintenance work from the coordinator.
    ok(&mut cs[0], "SELECT billing.replay_failed(); SELECT billing.maintenance()");
    assert_eq!(verify(&mut cs[0]), Vec::<String>::new());
}

/// One customer drained from all three nodes at once; one key from all nodes; a reserve
/// racing a debit.
#[test]
#[ignore = "needs the Citus cluster of scripts/citus-test.sh"]
fn races_across_nodes() {
    let mut c0 = node(0);
    // Drain: 300 credits, 12 threads (4 a node), debits of 1 until refused.
    c0.execute("SELECT billing.grant('drain', 300, 'g')", &[]).unwrap();
    let taken = race(12, |i, c| {
        let mut n = 0i64;
        for k in 0.. {
            match debit(c, "drain", 1, &format!("t{i}-{k}")) {
                Ok(_) => n += 1,
                Err(e) if sqlstate(&e) == "BL001" => break,
                Err(e) => panic!("debit on thread {i}: {} ({})", msg(&e), sqlstate(&e)),
            }
        }
        n
    });
    assert_eq!(taken.iter().sum::<i64>(), 300, "overspent or lost: {taken:?}");
    assert_eq!(balance(&mut c0, "drain"), 0);
    let debits = one_i64(&mut c0, "SELECT count(*) FROM billing.journal WHERE customer = 'drain' AND kind = 'debit'", &[]);
    assert_eq!(debits, 300);
    // Inside transaction blocks too (no delegation: every statement routed from its node).
    c0.execute("SELECT billing.grant('drain-tx', 90, 'g')", &[]).unwrap();
    let taken = race(9, |i, c| {
        let mut n = 0i64;
        for k in 0.. {
            c.batch_execute("BEGIN").unwrap();
            match debit(c, "drain-tx", 1, &format!("t{i}-{k}")) {
                Ok(_) => {
                    c.batch_execute("COMMIT").unwrap();
                    n += 1
                }
                Err(e) if sqlstate(&e) == "BL001" => {
                    c.batch_execute("ROLLBACK").unwrap();
                    break;
                }
                Err(e) => panic!("debit in a transaction on thread {i}: {} ({})", msg(&e), sqlstate(&e)),
            }
        }
        n
    });
    assert_eq!(taken.iter().sum::<i64>(), 90, "{taken:?}");
    assert_eq!(balance(&mut c0, "drain-tx"), 0);
    // One idempotency key from every node: one debit.
    c0.execute("SELECT billing.grant('onekey', 100, 'g')", &[]).unwrap();
    let results = race(9, |_, c| debit(c, "onekey", 5, "the-key").map_err(|e| msg(&e)));
    let results: Vec<_> = results.into_iter().map(|r| r.unwrap_or_else(|e| panic!("{e}"))).collect();
    assert_eq!(results.iter().filter(|r| !r.2).count(), 1, "{results:?}");
    assert!(results.iter().all(|r| r.0 == results[0].0 && r.1 == 95), "{results:?}");
    assert_eq!(balance(&mut c0, "onekey"), 95);
    // A reserve against a debit, each of 60 out of 100, from different nodes, many times.
    for round in 0..10 {
        let cust = format!("rvd{round}");
        c0.execute("SELECT billing.grant($1, 100, 'g')", &[&cust]).unwrap();
        let cu = cust.clone();
        let outcomes = race(2, move |i, c| -> Result<(), String> {
            let r = if i == 0 {
                c.query_one("SELECT billing.reserve($1, 60, 'r')", &[&cu]).map(|_| ())
            } else {
                c.query_one("SELECT * FROM billing.debit($1, 60, 'd')", &[&cu]).map(|_| ())
            };
            r.map_err(|e| sqlstate(&e))
        });
        let oks = outcomes.iter().filter(|o| o.is_ok()).count();
        assert_eq!(oks, 1, "round {round}: {outcomes:?}");
        assert!(outcomes.iter().all(|o| o.is_ok() || o.as_ref().unwrap_err() == "BL001"), "{outcomes:?}");
        assert_eq!(balance(&mut c0, &cust), 40);
    }
    assert_eq!(verify(&mut c0), Vec::<String>::new());
}

/// The remote commands of one call from the coordinator: (ports, shard ids) it touched.
fn touched(call: &str, in_block: bool) -> (BTreeSet<u16>, BTreeSet<i64>) {
    let seen = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let s2 = seen.clone();
    let mut cfg = config(0);
    cfg.notice_callback(move |n| s2.lock().unwrap().push((n.message().to_string(), n.detail().unwrap_or_default().to_string())));
    let mut c = cfg.connect(NoTls).unwrap();
    c.batch_execute("SET citus.log_remote_commands = on; SET client_min_messages = notice").unwrap();
    if in_block {
        c.batch_execute("BEGIN").unwrap();
    }
    c.batch_execute(call).unwrap_or_else(|e| panic!("{call}: {}", msg(&e)));
    if in_block {
        c.batch_execute("COMMIT").unwrap();
    }
    let notes = seen.lock().unwrap().clone();
    let mut ports = BTreeSet::new();
    let mut shards = BTreeSet::new();
    for (m, d) in &notes {
        if let Some(p) = d.split(':').nth(1).and_then(|x| x.split_whitespace().next()).and_then(|x| x.parse::<u16>().ok()) {
            ports.insert(p);
        }
        // billing.<table>_<shard id> in the statement sent
        for (i, _) in m.match_indices("billing.") {
            let rest = &m[i + 8..];
            let name: String = rest.chars().take_while(|ch| ch.is_ascii_alphanumeric() || *ch == '_').collect();
            if let Some((_, id)) = name.rsplit_once('_') {
                if let Ok(id) = id.parse::<i64>() {
                    shards.insert(id);
                }
            }
        }
    }
    (ports, shards)
}

/// Every hot-path call of one customer, from the coordinator, outside and inside a
/// transaction block: one worker, and only that customer's shard group.
#[test]
#[ignore = "needs the Citus cluster of scripts/citus-test.sh"]
fn hot_path_runs_on_one_worker_and_one_shard_group() {
    let mut c0 = node(0);
    ok(&mut c0, "SELECT billing.define_meter('route_tokens', 1, 1); SELECT billing.define_plan('route_plan', ARRAY['chat'], 0)");
    let cust = "routed";
    c0.execute("SELECT billing.grant($1, 100000, 'g0')", &[&cust]).unwrap();
    // The customer's shard group: the shard of each co-located table for this customer.
    let group: BTreeSet<i64> = c0
        .query(
            "SELECT get_shard_id_for_distribution_column(logicalrelid, $1::text) FROM pg_dist_partition
              WHERE colocationid = (SELECT colocationid FROM pg_dist_partition WHERE logicalrelid = 'billing.customers'::regclass)
                AND partmethod = 'h'",
            &[&cust],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // Reference tables (plans, meters, ...) have one shard, a copy on every node: reading
    // one is local wherever the call runs.
    let reference: BTreeSet<i64> = c0
        .query("SELECT s.shardid FROM pg_dist_shard s JOIN pg_dist_partition p USING (logicalrelid) WHERE p.partmethod = 'n'", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut report = BTreeMap::new();
    for in_block in [false, true] {
        let tag = if in_block { "b" } else { "a" };
        let d: String = c0.query_one("SELECT entry_id::text FROM billing.debit($1, 5, $2)", &[&cust, &format!("seed{tag}")]).unwrap().get(0);
        let r1: String = c0.query_one("SELECT billing.reserve($1, 5, $2)::text", &[&cust, &format!("seedr1{tag}")]).unwrap().get(0);
        let r2: String = c0.query_one("SELECT billing.reserve($1, 5, $2)::text", &[&cust, &format!("seedr2{tag}")]).unwrap().get(0);
        let calls = [
            ("debit", format!("SELECT * FROM billing.debit('{cust}', 1, 'k{tag}')")),
            ("grant", format!("SELECT billing.grant('{cust}', 1, 'g{tag}')")),
            ("reserve", format!("SELECT billing.reserve('{cust}', 1, 'r{tag}')")),
            ("extend", format!("SELECT billing.extend('{cust}', '{r1}', '1 hour')")),
            ("settle", format!("SELECT * FROM billing.settle('{cust}', '{r1}', 1)")),
            ("release", format!("SELECT * FROM billing.release('{cust}', '{r2}')")),
            ("refund", format!("SELECT * FROM billing.refund('{cust}', '{d}', 1, NULL)")),
            ("balance", format!("SELECT billing.balance('{cust}')")),
            ("charge", format!("SELECT * FROM billing.charge('{cust}', 'chat', 1, 'ch{tag}')")),
            ("record_usage", format!("SELECT * FROM billing.record_usage('{cust}', 'route_tokens', 1, 'u{tag}')")),
            ("access", format!("SELECT * FROM billing.access('{cust}', 'chat')")),
            ("can_access", format!("SELECT billing.can_access('{cust}', 'chat')")),
        ];
        for (name, sql) in calls {
            let (ports, shards) = touched(&sql, in_block);
            assert_eq!(ports.len(), 1, "{name} (in a block: {in_block}) reached {ports:?}");
            let shards: BTreeSet<i64> = shards.difference(&reference).copied().collect();
            assert!(shards.is_subset(&group), "{name} (in a block: {in_block}) touched shards {shards:?} outside the customer's group {group:?}");
            if in_block {
                assert!(!shards.is_empty(), "{name}: no routed statement seen");
            }
            report.insert((name, in_block), (ports.len(), shards.len()));
        }
    }
    eprintln!("hot path from the coordinator: call, in a transaction block, workers reached, shards touched");
    for ((name, b), (w, s)) in &report {
        eprintln!("  {name:13} {b:5} {w} worker(s) {s} shard(s)");
    }
}

/// verify() reads every shard: clean, then it finds a balance changed on a worker's shard.
#[test]
#[ignore = "needs the Citus cluster of scripts/citus-test.sh"]
fn verify_sees_every_shard() {
    let mut c0 = node(0);
    c0.execute("SELECT billing.grant('tampered', 100, 'g')", &[]).unwrap();
    debit(&mut c0, "tampered", 10, "d").unwrap();
    assert_eq!(verify(&mut c0), Vec::<String>::new());
    let (shard, port): (i64, i32) = c0
        .query_one(
            "SELECT s.shardid, p.nodeport FROM pg_dist_shard s JOIN pg_dist_placement pl USING (shardid) JOIN pg_dist_node p USING (groupid)
              WHERE s.shardid = get_shard_id_for_distribution_column('billing.customers', 'tampered')",
            &[],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    let k = ports().iter().position(|p| i32::from(*p) == port).expect("the shard's node");
    let mut w = node(k);
    let bump = |w: &mut Client, by: i64| {
        w.execute(&format!("UPDATE billing.customers_{shard} SET balance = balance + $1 WHERE customer = 'tampered'"), &[&by]).unwrap();
    };
    bump(&mut w, 7);
    let found = verify(&mut c0);
    assert!(found.iter().any(|r| r.contains("tampered")), "verify() missed a corrupted balance on node {k}: {found:?}");
    bump(&mut w, -7);
    assert_eq!(verify(&mut c0), Vec::<String>::new());
}

/// The outbox on a cluster: an empty claim's lease (a reference table) is seen by writers
/// on every node, and the writing node notifies: a consumer listening on every node is
/// woken whichever node wrote the row (README: Outbox).
#[test]
#[ignore = "needs the Citus cluster of scripts/citus-test.sh"]
fn outbox_wakes_a_consumer_listening_on_every_node() {
    use postgres::fallible_iterator::FallibleIterator;
    use std::time::{Duration, Instant};
    let mut c0 = node(0);
    c0.execute("SELECT billing.grant('lowb', 150, 'g')", &[]).unwrap();
    c0.execute("SELECT billing.set_low_balance('lowb', 100)", &[]).unwrap();
    let mut listeners: Vec<Client> = (0..ports().len()).map(node).collect();
    for l in listeners.iter_mut() {
        l.batch_execute("LISTEN billing").unwrap();
    }
    // Claim until empty: the empty claim leaves this consumer's lease.
    for _ in 0..1000 {
        let n = c0.query("SELECT id FROM billing.claim_outbox(1000, '1 hour', '1 minute', 'citus-consumer')", &[]).unwrap().len();
        if n == 0 {
            break;
        }
    }
    let leases: Vec<i64> = (0..ports().len())
        .map(|n| one_i64(&mut node(n), "SELECT count(*) FROM billing.outbox_waiters WHERE consumer = 'citus-consumer'", &[]))
        .collect();
    assert_eq!(leases, vec![1; ports().len()], "the lease is not on every node");
    // A delegated debit (on the worker holding the customer) crosses the threshold.
    debit(&mut node(1), "lowb", 60, "cross").unwrap();
    let start = Instant::now();
    let mut woken = None;
    while woken.is_none() && start.elapsed() < Duration::from_secs(10) {
        for (i, l) in listeners.iter_mut().enumerate() {
            if l.notifications().timeout_iter(Duration::from_millis(50)).next().unwrap().is_some() {
                woken = Some(i);
                break;
            }
        }
    }
    let woken = woken.expect("no node notified the waiting consumer");
    let rows = c0.query("SELECT id FROM billing.claim_outbox(100, '1 hour', '1 minute', 'citus-consumer') WHERE kind = 'low_balance'", &[]).unwrap();
    assert_eq!(rows.len(), 1, "the low-balance row, claimed from the coordinator");
    eprintln!("outbox: the consumer was woken through node {woken}'s LISTEN");
}

/// Batches span shards (their customers live on both workers): through the coordinator
/// and a worker, and two batches of the same customers in opposite orders from two nodes
/// at once, many times: no deadlock (customers are locked in one order), all applied.
#[test]
#[ignore = "needs the Citus cluster of scripts/citus-test.sh"]
fn batches_across_shards() {
    let mut c0 = node(0);
    let custs: Vec<String> = (0..20).map(|i| format!("batch{i}")).collect();
    for cu in &custs {
        c0.execute("SELECT billing.grant($1, 10000, 'g')", &[cu]).unwrap();
    }
    let amounts: Vec<i64> = vec![1; custs.len()];
    for n in [0, 2] {
        let keys: Vec<String> = (0..custs.len()).map(|i| format!("n{n}-{i}")).collect();
        let rows = node(n)
            .query("SELECT i, sqlstate FROM billing.debit_many($1, $2, $3)", &[&custs, &amounts, &keys])
            .unwrap_or_else(|e| panic!("debit_many on node {n}: {}", msg(&e)));
        assert_eq!(rows.len(), custs.len());
        assert!(rows.iter().all(|r| r.get::<_, Option<String>>(1).is_none()), "refused items on node {n}");
    }
    ok(&mut c0, "SELECT billing.define_meter('batch_tokens', 1, 1)");
    let meters: Vec<String> = vec!["batch_tokens".into(); custs.len()];
    let quantities: Vec<i64> = vec![1; custs.len()];
    let ukeys: Vec<String> = (0..custs.len()).map(|i| format!("u{i}")).collect();
    let rows = node(1)
        .query("SELECT i, credits, sqlstate FROM billing.record_usage_many($1, $2, $3, $4)", &[&custs, &meters, &quantities, &ukeys])
        .unwrap_or_else(|e| panic!("record_usage_many: {}", msg(&e)));
    assert!(rows.iter().all(|r| r.get::<_, Option<i64>>(1) == Some(1) && r.get::<_, Option<String>>(2).is_none()));
    let custs = Arc::new(custs);
    let errors = race(6, move |t, c| -> Vec<String> {
        let mut errs = vec![];
        for round in 0..10 {
            let mut order: Vec<String> = custs.to_vec();
            if t % 2 == 1 {
                order.reverse();
            }
            let keys: Vec<String> = (0..order.len()).map(|i| format!("race{t}-{round}-{i}")).collect();
            let amounts: Vec<i64> = vec![1; order.len()];
            if let Err(e) = c.query("SELECT i FROM billing.debit_many($1, $2, $3)", &[&order, &amounts, &keys]) {
                errs.push(format!("{} {}", sqlstate(&e), msg(&e)));
            }
        }
        errs
    });
    let errors: Vec<String> = errors.into_iter().flatten().collect();
    assert!(errors.is_empty(), "batches failed: {errors:?}");
    // 2 debit batches, a usage batch, 6 threads x 10 rounds: one credit a customer each.
    let left = one_i64(&mut c0, "SELECT sum(billing.balance('batch' || i))::int8 FROM generate_series(0, 19) i", &[]);
    assert_eq!(left, 20 * (10000 - 3 - 60));
    assert_eq!(verify(&mut c0), Vec::<String>::new());
}
