//! Fault tolerance under load (issue 7): whatever happens to the server, no committed
//! credit, debit or event is lost or counted twice.
//!
//! Eight client threads run a bounded mixed workload (debits with fresh keys, two debits
//! in one transaction, reserve then settle or release, refunds, a debit bound to fail,
//! and signed Stripe deliveries with duplicates and reordering, through `billing.ingest`
//! and the inbox). Each operation's outcome is logged with its key or event id:
//! - committed: the client saw it (or its COMMIT) succeed;
//! - failed: an ERROR came back, so its transaction rolled back;
//! - unknown: the connection died around it (FATAL, or no answer at all).
//!
//! Meanwhile the main thread injects faults: `pg_terminate_backend` of random client
//! sessions, `kill -9` of a backend (the postmaster then restarts every session), and
//! `pg_ctl stop -m immediate` + `pg_ctl start` of the whole server. Clients reconnect
//! (polling) and go on. After each fault and at the end: `billing.verify()` is clean;
//! every committed operation is present exactly once (journal row by key, settle/release
//! by reservation, `billing.events` row by event id, one grant per purchase); every
//! failed one is absent; every unknown one is present at most once, and retrying it with
//! the same key settles it (replayed, or applied now, once); the two debits of one
//! transaction are both there or both not; per customer, the journal sums to
//! `billing.balance`, and at the end to what the client's log says it must be.
//!
//! It restarts the cluster, so the plain client-test run skips it by name (`--skip
//! under_faults`) and `scripts/test.sh` runs it alone, passing the cluster's directory:
//!
//! ```text
//! CLUSTER_DIR=/tmp/bl.xxxx DATABASE_URL="host=... port=... user=postgres dbname=postgres" \
//!   cargo test -p billing-it --test faults -- --nocapture
//! ```
//!
//! `FAULT_OPS` (operations per thread, default 2000) and `FAULT_SEED` tune it.
mod common;
mod stripe;

use common::*;
use postgres::{Client, Config, NoTls};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const THREADS: usize = 8;
const CUSTOMERS: usize = 12;
const INITIAL: i64 = 1_000_000_000;

/// The first customer starts small, so it runs out, is refused, and is topped up again
/// by refunds and purchases all through the run (with slots: its calls gather often).
fn initial(i: usize) -> i64 {
    if i == 0 {
        5_000
    } else {
        INITIAL
    }
}
const EP: &str = "stripe-faults";
const SECRET: &str = "whsec_faults_3c9d";
const WORKER_APP: &str = "billing-faults-worker";
/// How long a client keeps trying to reconnect (the server may be in crash recovery).
const RECONNECT: Duration = Duration::from_secs(120);

// ---- the server ----------------------------------------------------------------------------

/// The cluster of `CLUSTER_DIR` (scripts/cluster.sh): stopped and started with pg_ctl as
/// the `postgres` OS user, with the options it was started with (`postmaster.opts`).
struct Server {
    dir: PathBuf,
    pg_ctl: PathBuf,
    as_postgres: bool,
}

impl Server {
    fn from_env() -> Server {
        let dir = std::env::var("CLUSTER_DIR").unwrap_or_else(|_| {
            panic!(
                "CLUSTER_DIR is not set. The fault test stops and starts the server, so it needs the \
                 directory of a throwaway cluster (scripts/cluster.sh sets it):\n  \
                 source scripts/cluster.sh; cluster_start 54400\n  \
                 CLUSTER_DIR=$CLUSTER_DIR DATABASE_URL=\"host=$PGHOST port=$PGPORT user=postgres dbname=postgres\" \
                 cargo test -p billing-it --test faults -- --nocapture"
            )
        });
        let dir = PathBuf::from(dir);
        assert!(dir.join("data/postmaster.opts").exists(), "{} holds no running cluster (no data/postmaster.opts)", dir.display());
        let uid = Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
        Server { dir, pg_ctl: pg_bin("pg_ctl"), as_postgres: uid == "0" }
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn pg_ctl(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&self.pg_ctl);
            c
        } else {
            Command::new(&self.pg_ctl)
        };
        // RUST_BACKTRACE would make pgrx print a backtrace into the log for every ERROR.
        cmd.args(args).env_remove("RUST_BACKTRACE").output().expect("pg_ctl runs")
    }

    /// The server's own options, from `postmaster.opts` (everything but the binary and -D),
    /// quoted for the shell pg_ctl hands `-o` to.
    fn options(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("data/postmaster.opts")).expect("postmaster.opts");
        let args: Vec<&str> = text.split('"').skip(1).step_by(2).collect();
        let mut out = vec![];
        let mut i = 0;
        while i < args.len() {
            if args[i] == "-D" {
                i += 2;
                continue;
            }
            out.push(format!("'{}'", args[i].replace('\'', r"'\''")));
            i += 1;
        }
        out.join(" ")
    }

    fn running(&self) -> bool {
        self.pg_ctl(&["status", "-D", &self.data()]).status.success()
    }

    fn stop_immediate(&self) {
        let o = self.pg_ctl(&["stop", "-m", "immediate", "-w", "-D", &self.data()]);
        assert!(o.status.success(), "pg_ctl stop -m immediate: {}", String::from_utf8_lossy(&o.stderr));
    }

    fn start(&self, options: &str) {
        let log = self.dir.join("server.log").display().to_string();
        let o = self.pg_ctl(&["start", "-w", "-t", "120", "-D", &self.data(), "-l", &log, "-o", options]);
        assert!(o.status.success(), "pg_ctl start: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    }
}

/// Leaves the server running whatever happens to the test (the next test layers need it).
struct KeepRunning<'a>(&'a Server, String);

impl Drop for KeepRunning<'_> {
    fn drop(&mut self) {
        if !self.0.running() {
            self.0.start(&self.1);
        }
    }
}

/// Connects, polling while the server is down or recovering.
fn connect_retry(cfg: &Config) -> Client {
    let deadline = Instant::now() + RECONNECT;
    loop {
        match cfg.connect(NoTls) {
            Ok(c) => return c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                thread::sleep(Duration::from_millis(50)); // bounded wait for the server to come back
            }
            Err(e) => panic!("the server did not come back within {RECONNECT:?}: {e}"),
        }
    }
}

// ---- operations and outcomes ---------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Debit {
        cust: String,
        key: String,
        amount: i64,
    },
    /// Two debits (of two customers, in a fixed order) in one transaction.
    Tx {
        parts: Vec<(String, String, i64)>,
    },
    Reserve {
        cust: String,
        key: String,
        amount: i64,
    },
    Settle {
        cust: String,
        rid: String,
        amount: i64,
        actual: i64,
    },
    Release {
        cust: String,
        rid: String,
        amount: i64,
    },
    Refund {
        cust: String,
        key: String,
        entry: String,
        amount: i64,
    },
    Deliver {
        event: String,
        purchase: String,
        cust: String,
        credits: i64,
        body: String,
        inbox: bool,
    },
}

impl Op {
    fn kind(&self) -> &'static str {
        match self {
            Op::Debit { .. } => "debit",
            Op::Tx { .. } => "tx",
            Op::Reserve { .. } => "reserve",
            Op::Settle { .. } => "settle",
            Op::Release { .. } => "release",
            Op::Refund { .. } => "refund",
            Op::Deliver { .. } => "deliver",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    Committed,
    Failed(String),
    Unknown(String),
}

#[derive(Clone, Debug)]
struct Rec {
    op: Op,
    outcome: Outcome,
}

fn classify(e: &postgres::Error) -> Outcome {
    match e.as_db_error() {
        // An ERROR rolls the transaction back; FATAL or PANIC may come after the commit.
        Some(d) if d.severity() == "ERROR" => Outcome::Failed(format!("{} {}", d.code().code(), d.message())),
        Some(d) => Outcome::Unknown(format!("{} {} {}", d.severity(), d.code().code(), d.message())),
        None => Outcome::Unknown(e.to_string()),
    }
}

fn debit(c: &mut Client, cust: &str, amount: i64, key: &str) -> Result<(String, bool), postgres::Error> {
    c.query_one("SELECT entry_id::text, replayed FROM billing.debit($1, $2, $3)", &[&cust, &amount, &key]).map(|r| (r.get(0), r.get(1)))
}

fn tx(c: &mut Client, parts: &[(String, String, i64)]) -> Result<Vec<bool>, postgres::Error> {
    let mut t = c.transaction()?;
    let mut replayed = vec![];
    for (cust, key, amount) in parts {
        let r = t.query_one("SELECT replayed FROM billing.debit($1, $2, $3)", &[cust, amount, key])?;
        replayed.push(r.get(0));
    }
    t.commit()?;
    Ok(replayed)
}

fn reserve(c: &mut Client, cust: &str, amount: i64, key: &str) -> Result<String, postgres::Error> {
    c.query_one("SELECT billing.reserve($1, $2, $3, '1 hour')::text", &[&cust, &amount, &key]).map(|r| r.get(0))
}

fn settle(c: &mut Client, rid: &str, actual: i64) -> Result<bool, postgres::Error> {
    c.query_one("SELECT replayed FROM billing.settle($1::text::uuid, $2)", &[&rid, &actual]).map(|r| r.get(0))
}

fn release(c: &mut Client, rid: &str) -> Result<bool, postgres::Error> {
    c.query_one("SELECT replayed FROM billing.release($1::text::uuid)", &[&rid]).map(|r| r.get(0))
}

fn refund(c: &mut Client, entry: &str, amount: i64, key: &str) -> Result<bool, postgres::Error> {
    c.query_one("SELECT replayed FROM billing.refund($1::text::uuid, $2, $3)", &[&entry, &amount, &key]).map(|r| r.get(0))
}

/// One delivery, signed now (as Stripe signs every retry afresh). The status, when
/// ingested directly; the inbox answers nothing but success.
fn deliver(c: &mut Client, body: &str, inbox: bool) -> Result<Option<String>, postgres::Error> {
    let h = stripe::signed_headers(SECRET, body);
    if inbox {
        c.execute("INSERT INTO billing.inbox (endpoint, headers, body) VALUES ($1, $2::text::jsonb, $3)", &[&EP, &h, &body]).map(|_| None)
    } else {
        c.query_one("SELECT status FROM billing.ingest($1, $2::text::jsonb, $3)", &[&EP, &h, &body]).map(|r| Some(r.get(0)))
    }
}

/// Retries `op` with its own key (settle/release: the reservation; deliveries: the event
/// id). `Ok(true)` when the retry found it done (replayed, duplicate), `Ok(false)` when it
/// was applied only now, `Err` when it failed again (then it was never applied).
fn retry(c: &mut Client, op: &Op) -> Result<bool, String> {
    let e = |e: postgres::Error| msg(&e);
    match op {
        Op::Debit { cust, key, amount } => debit(c, cust, *amount, key).map(|r| r.1).map_err(e),
        Op::Tx { parts } => {
            let r = tx(c, parts).map_err(e)?;
            if r.iter().any(|x| *x != r[0]) {
                return Err(format!("ATOMICITY: one transaction's debits were found partly done: replayed {r:?}"));
            }
            Ok(r[0])
        }
        Op::Reserve { cust, key, amount } => {
            let before: i64 = c
                .query_one(
                    "SELECT count(*) FROM billing.journal j JOIN billing.customers s USING (customer)
                      WHERE coalesce(s.slot_of, s.customer) = $1 AND j.idempotency_key = $2",
                    &[cust, key],
                )
                .map_err(e)?
                .get(0);
            reserve(c, cust, *amount, key).map_err(e)?;
            Ok(before == 1)
        }
        Op::Settle { rid, actual, .. } => settle(c, rid, *actual).map_err(e),
        Op::Release { rid, .. } => release(c, rid).map_err(e),
        Op::Refund { key, entry, amount, .. } => refund(c, entry, *amount, key).map_err(e),
        Op::Deliver { body, .. } => match deliver(c, body, false).map_err(e)?.as_deref() {
            Some("duplicate") => Ok(true),
            Some("applied") => Ok(false),
            other => Err(format!("redelivery answered {other:?}")),
        },
    }
}

// ---- the load ------------------------------------------------------------------------------

struct Shared {
    logs: Vec<Mutex<Vec<Rec>>>,
    done: AtomicUsize,
    signal: (Mutex<()>, Condvar),
    reconnects: AtomicUsize,
}

impl Shared {
    fn log(&self, t: usize, op: Op, outcome: Outcome) {
        self.logs[t].lock().unwrap().push(Rec { op, outcome });
    }
    fn tick(&self) {
        self.done.fetch_add(1, Ordering::SeqCst);
        self.signal.1.notify_all();
    }
    fn snapshot(&self) -> Vec<Rec> {
        self.logs.iter().flat_map(|l| l.lock().unwrap().clone()).collect()
    }
}

/// A client's connection: reconnects (polling) when the last one died.
struct Conn {
    cfg: Config,
    c: Option<Client>,
    shared: Arc<Shared>,
}

impl Conn {
    fn get(&mut self) -> &mut Client {
        if self.c.as_ref().is_none_or(|c| c.is_closed()) {
            if self.c.take().is_some() {
                self.shared.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            self.c = Some(connect_retry(&self.cfg));
        }
        self.c.as_mut().unwrap()
    }
    /// After an unknown outcome the connection is gone (or not to be trusted).
    fn settle_outcome(&mut self, o: &Outcome) {
        if matches!(o, Outcome::Unknown(_)) {
            self.c = None;
            self.shared.reconnects.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn customer(i: usize) -> String {
    format!("c{i:02}")
}

fn run<T>(conn: &mut Conn, f: impl FnOnce(&mut Client) -> Result<T, postgres::Error>) -> (Outcome, Option<T>) {
    let r = f(conn.get());
    let (o, v) = match r {
        Ok(v) => (Outcome::Committed, Some(v)),
        Err(e) => (classify(&e), None),
    };
    conn.settle_outcome(&o);
    (o, v)
}

fn worker(t: usize, ops: usize, seed: u64, cfg: Config, shared: Arc<Shared>) {
    let mut rng = Rng::new(seed ^ (0xFA17 + t as u64));
    let mut conn = Conn { cfg, c: None, shared: shared.clone() };
    let mut refundable: Vec<(String, String, i64)> = vec![]; // (customer, entry, amount)
    let mut pending: Vec<Op> = vec![]; // deliveries not sent yet (sent in random order)
    let mut sent: Vec<Op> = vec![];
    let mut purchases = 0;
    for i in 0..ops {
        let key = format!("t{t}-{i}");
        let roll = rng.below(100);
        if roll < 28 || (52..62).contains(&roll) && refundable.is_empty() {
            let (cust, amount) = (customer(rng.below(CUSTOMERS)), rng.range(1, 50));
            let (o, v) = run(&mut conn, |c| debit(c, &cust, amount, &key));
            if let Some((entry, _)) = v {
                refundable.push((cust.clone(), entry, amount));
            }
            shared.log(t, Op::Debit { cust, key, amount }, o);
        } else if roll < 35 {
            let a = rng.below(CUSTOMERS);
            let b = (a + 1 + rng.below(CUSTOMERS - 1)) % CUSTOMERS;
            let (a, b) = (a.min(b), a.max(b)); // one agreed order: no deadlocks
            let parts = vec![(customer(a), format!("{key}-a"), rng.range(1, 30)), (customer(b), format!("{key}-b"), rng.range(1, 30))];
            let (o, _) = run(&mut conn, |c| tx(c, &parts));
            shared.log(t, Op::Tx { parts }, o);
        } else if roll < 52 {
            let (cust, amount) = (customer(rng.below(CUSTOMERS)), rng.range(10, 200));
            let (o, rid) = run(&mut conn, |c| reserve(c, &cust, amount, &key));
            shared.log(t, Op::Reserve { cust: cust.clone(), key, amount }, o);
            if let Some(rid) = rid {
                // then the work's real cost: below, at or above the hold, or nothing used
                let op = match rng.below(10) {
                    0 | 1 => Op::Release { cust, rid, amount },
                    2 => Op::Settle { actual: amount + rng.range(1, 20), cust, rid, amount },
                    _ => Op::Settle { actual: rng.range(0, amount), cust, rid, amount },
                };
                let (o, _) = match &op {
                    Op::Release { rid, .. } => run(&mut conn, |c| release(c, rid)),
                    Op::Settle { rid, actual, .. } => run(&mut conn, |c| settle(c, rid, *actual)),
                    _ => unreachable!(),
                };
                shared.log(t, op, o);
            }
        } else if roll < 62 {
            let (cust, entry, amount) = refundable.swap_remove(rng.below(refundable.len()));
            let amount = rng.range(1, amount);
            let (o, _) = run(&mut conn, |c| refund(c, &entry, amount, &key));
            shared.log(t, Op::Refund { cust, key, entry, amount }, o);
        } else if roll < 65 {
            // bound to fail cleanly: the poor customer has nothing
            let (o, _) = run(&mut conn, |c| debit(c, "poor", 1, &key));
            shared.log(t, Op::Debit { cust: "poor".into(), key, amount: 1 }, o);
        } else {
            let op = if rng.pct(10) && !sent.is_empty() {
                // a duplicate delivery of something sent before
                let mut op = rng.pick(&sent).clone();
                if let Op::Deliver { inbox, .. } = &mut op {
                    *inbox = rng.pct(50);
                }
                op
            } else {
                if pending.len() < 2 || rng.pct(30) {
                    // a purchase: its checkout and payment-intent events, either order
                    purchases += 1;
                    let p = format!("t{t}_{purchases}");
                    let (cust, credits, now) = (customer(rng.below(CUSTOMERS)), rng.range(1, 100), stripe::now_unix());
                    let pi = format!("pi_{p}");
                    let bodies = [
                        (format!("evt_cs_{p}"), stripe::checkout_completed(&format!("evt_cs_{p}"), &format!("cs_{p}"), &pi, &cust, credits, now)),
                        (format!("evt_pi_{p}"), stripe::payment_intent_succeeded(&format!("evt_pi_{p}"), &pi, &cust, credits, now)),
                    ];
                    for (event, body) in bodies {
                        pending.push(Op::Deliver { event, purchase: pi.clone(), cust: cust.clone(), credits, body, inbox: rng.pct(40) });
                    }
                }
                pending.swap_remove(rng.below(pending.len())) // any pending one: reordered
            };
            let (o, status) = match &op {
                Op::Deliver { body, inbox, .. } => run(&mut conn, |c| deliver(c, body, *inbox)),
                _ => unreachable!(),
            };
            let o = match (o, status.flatten()) {
                (Outcome::Committed, Some(s)) if s != "applied" && s != "duplicate" => Outcome::Failed(format!("ingest answered {s}")),
                (o, _) => o,
            };
            shared.log(t, op.clone(), o);
            sent.push(op);
        }
        shared.tick();
    }
}

// ---- checks --------------------------------------------------------------------------------

#[derive(Default)]
struct Found {
    /// (customer, key) -> kinds of the journal rows with that key
    keys: HashMap<(String, String), Vec<String>>,
    settles: HashMap<String, usize>,
    releases: HashMap<String, usize>,
    events: HashMap<String, String>,
}

fn load(c: &mut Client) -> Result<Found, postgres::Error> {
    let mut f = Found::default();
    // A slot account's rows count for its customer.
    let all = "SELECT coalesce(s.slot_of, s.customer), j.idempotency_key, j.kind, j.reservation_id::text
                 FROM billing.journal j JOIN billing.customers s USING (customer)";
    for r in c.query(all, &[])? {
        let (cust, key, kind, rid): (String, Option<String>, String, Option<String>) = (r.get(0), r.get(1), r.get(2), r.get(3));
        if let Some(k) = key {
            f.keys.entry((cust, k)).or_default().push(kind.clone());
        }
        match (kind.as_str(), rid) {
            ("settle", Some(rid)) => *f.settles.entry(rid).or_default() += 1,
            ("release", Some(rid)) => *f.releases.entry(rid).or_default() += 1,
            _ => {}
        }
    }
    for r in c.query("SELECT event_id, status FROM billing.events WHERE provider = 'stripe'", &[])? {
        f.events.insert(r.get(0), r.get(1));
    }
    Ok(f)
}

impl Found {
    fn key(&self, cust: &str, key: &str, kind: &str) -> usize {
        self.keys.get(&(cust.to_string(), key.to_string())).map_or(0, |v| v.iter().filter(|k| *k == kind).count())
    }
    /// How many times `op` is present.
    fn count(&self, op: &Op) -> usize {
        match op {
            Op::Debit { cust, key, .. } => self.key(cust, key, "debit"),
            Op::Tx { parts } => parts.iter().map(|(c, k, _)| self.key(c, k, "debit")).max().unwrap_or(0),
            Op::Reserve { cust, key, .. } => self.key(cust, key, "hold"),
            Op::Settle { rid, .. } => self.settles.get(rid).copied().unwrap_or(0),
            Op::Release { rid, .. } => self.releases.get(rid).copied().unwrap_or(0),
            Op::Refund { cust, key, .. } => self.key(cust, key, "refund"),
            Op::Deliver { event, .. } => self.events.contains_key(event) as usize,
        }
    }
}

#[derive(Default)]
struct Report {
    label: String,
    ops: usize,
    lost: Vec<String>,
    duplicated: Vec<String>,
    problems: Vec<String>,
}

impl Report {
    fn ok(&self) -> bool {
        self.lost.is_empty() && self.duplicated.is_empty() && self.problems.is_empty()
    }
    fn describe(&self) -> String {
        let mut s = format!(
            "{}: {} ops checked, lost {}, duplicated {}, other problems {}",
            self.label,
            self.ops,
            self.lost.len(),
            self.duplicated.len(),
            self.problems.len()
        );
        for (what, v) in [("lost", &self.lost), ("duplicated", &self.duplicated), ("problem", &self.problems)] {
            for x in v.iter().take(10) {
                s.push_str(&format!("\n    {what}: {x}"));
            }
        }
        s
    }
}

/// Whether an error means the connection itself was lost (not an answer to the query).
fn connection_lost(e: &postgres::Error) -> bool {
    e.as_db_error().is_none_or(|d| d.severity() != "ERROR")
}

/// Checks the log against the database, reconnecting if a late effect of the last fault
/// (a crash restart still under way) takes the checking session away.
fn check(cfg: &Config, shared: &Shared, label: &str) -> Report {
    let mut last = String::new();
    for _ in 0..5 {
        match check_once(cfg, shared, label) {
            Ok(r) => return r,
            Err(e) => last = msg(&e),
        }
    }
    Report { label: label.to_string(), problems: vec![format!("the check kept losing its connection: {last}")], ..Default::default() }
}

/// One check. The log is read first, so everything it says committed was committed before
/// the database is read. `Err` only when the connection was lost.
fn check_once(cfg: &Config, shared: &Shared, label: &str) -> Result<Report, postgres::Error> {
    let recs = shared.snapshot();
    let mut c = connect_retry(cfg);
    let mut r = Report { label: label.to_string(), ops: recs.len(), ..Default::default() };
    let lost_or = |e: postgres::Error, what: &str, r: &mut Report| -> Result<(), postgres::Error> {
        if connection_lost(&e) {
            return Err(e);
        }
        r.problems.push(format!("{what}: {}", msg(&e)));
        Ok(())
    };
    match c.query("SELECT customer, check_name, expected, actual, detail FROM billing.verify()", &[]) {
        Ok(rows) => {
            for row in rows {
                r.problems.push(format!(
                    "verify(): {:?} {:?} expected {:?} actual {:?} {:?}",
                    row.get::<_, Option<String>>(0),
                    row.get::<_, Option<String>>(1),
                    row.get::<_, Option<i64>>(2),
                    row.get::<_, Option<i64>>(3),
                    row.get::<_, Option<String>>(4)
                ));
            }
        }
        Err(e) => lost_or(e, "billing.verify()", &mut r)?,
    }
    let found = match load(&mut c) {
        Ok(f) => f,
        Err(e) => {
            lost_or(e, "reading the journal", &mut r)?;
            return Ok(r);
        }
    };
    let mut purchases: BTreeMap<(String, String), bool> = BTreeMap::new(); // (customer, pi) -> a delivery committed
    let mut events: BTreeMap<String, bool> = BTreeMap::new();
    for rec in &recs {
        let n = found.count(&rec.op);
        let what = format!("{} {:?} ({:?})", rec.op.kind(), op_id(&rec.op), rec.outcome);
        if let Op::Deliver { event, purchase, cust, .. } = &rec.op {
            let committed = rec.outcome == Outcome::Committed;
            *events.entry(event.clone()).or_default() |= committed;
            *purchases.entry((cust.clone(), purchase.clone())).or_default() |= committed;
            if let Some(s) = found.events.get(event) {
                if s != "applied" {
                    r.problems.push(format!("event {event} stored with status {s}"));
                }
            }
            continue;
        }
        if let Op::Tx { parts } = &rec.op {
            let each: Vec<usize> = parts.iter().map(|(c, k, _)| found.key(c, k, "debit")).collect();
            if each.iter().any(|x| *x != each[0]) {
                r.problems.push(format!("ATOMICITY: {what}: the transaction's debits are present {each:?} times"));
            }
        }
        match (&rec.outcome, n) {
            (_, n) if n > 1 => r.duplicated.push(format!("{what} present {n} times")),
            (Outcome::Committed, 0) => r.lost.push(what),
            (Outcome::Failed(_), 1) => r.problems.push(format!("PHANTOM: {what} failed but is present")),
            _ => {}
        }
    }
    for (event, committed) in events {
        if committed && !found.events.contains_key(&event) {
            r.lost.push(format!("event {event}"));
        }
    }
    for ((cust, pi), committed) in purchases {
        let n = found.key(&cust, &format!("stripe:purchase:{pi}"), "grant");
        if n > 1 {
            r.duplicated.push(format!("purchase {pi} granted {n} times"));
        } else if committed && n == 0 {
            r.lost.push(format!("purchase {pi}: a delivery committed but nothing was granted"));
        }
    }
    // Per customer, in one snapshot: the journal sums to the balance.
    match sums(&mut c) {
        Ok(v) => r.problems.extend(v),
        Err(e) => lost_or(e, "balance check", &mut r)?,
    }
    Ok(r)
}

fn op_id(op: &Op) -> String {
    match op {
        Op::Debit { cust, key, .. } | Op::Reserve { cust, key, .. } | Op::Refund { cust, key, .. } => format!("{cust}/{key}"),
        Op::Tx { parts } => format!("{}/{} + {}/{}", parts[0].0, parts[0].1, parts[1].0, parts[1].1),
        Op::Settle { rid, .. } | Op::Release { rid, .. } => format!("reservation {rid}"),
        Op::Deliver { event, .. } => event.clone(),
    }
}

/// Customers whose journal does not sum to their balance, read in one REPEATABLE READ
/// snapshot while the load goes on (retried on a serialization failure).
fn sums(c: &mut Client) -> Result<Vec<String>, postgres::Error> {
    let mut attempt = 0;
    loop {
        let r = (|| -> Result<Vec<String>, postgres::Error> {
            let mut t = c.build_transaction().isolation_level(postgres::IsolationLevel::RepeatableRead).read_only(true).start()?;
            let rows = t.query(
                "SELECT c.customer, billing.balance(c.customer),
                        coalesce((SELECT sum(j.amount) FROM billing.journal j JOIN billing.customers s USING (customer)
                                   WHERE coalesce(s.slot_of, s.customer) = c.customer), 0)::bigint
                   FROM billing.customers c WHERE c.slot_of IS NULL",
                &[],
            )?;
            t.commit()?;
            Ok(rows
                .iter()
                .filter(|r| r.get::<_, i64>(1) != r.get::<_, i64>(2))
                .map(|r| format!("{}: balance {} but the journal sums to {}", r.get::<_, String>(0), r.get::<_, i64>(1), r.get::<_, i64>(2)))
                .collect())
        })();
        match r {
            Err(e) if e.code().map(|c| c.code()) == Some("40001") && attempt < 5 => attempt += 1,
            r => return r,
        }
    }
}

/// What each customer's balance must be by the log, once every operation is settled.
fn model(recs: &[Rec]) -> BTreeMap<String, i64> {
    let mut m: BTreeMap<String, i64> = (0..CUSTOMERS).map(|i| (customer(i), initial(i))).collect();
    m.insert("poor".into(), 0);
    let mut purchases: BTreeMap<String, (String, i64)> = BTreeMap::new();
    for rec in recs.iter().filter(|r| r.outcome == Outcome::Committed) {
        match &rec.op {
            Op::Debit { cust, amount, .. } | Op::Reserve { cust, amount, .. } => *m.get_mut(cust).unwrap() -= amount,
            Op::Tx { parts } => {
                for (cust, _, amount) in parts {
                    *m.get_mut(cust).unwrap() -= amount;
                }
            }
            Op::Settle { cust, amount, actual, .. } => *m.get_mut(cust).unwrap() += amount - actual,
            Op::Release { cust, amount, .. } | Op::Refund { cust, amount, .. } => *m.get_mut(cust).unwrap() += amount,
            Op::Deliver { purchase, cust, credits, .. } => {
                purchases.insert(purchase.clone(), (cust.clone(), *credits));
            }
        }
    }
    for (cust, credits) in purchases.into_values() {
        *m.get_mut(&cust).unwrap() += credits;
    }
    m
}

// ---- faults --------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    Terminate,
    Kill9,
    Restart,
}

/// Worker backends of the test database: (pid, state).
fn worker_backends(c: &mut Client, db: &str) -> Vec<(i32, String)> {
    c.query(
        "SELECT pid, coalesce(state, '') FROM pg_stat_activity WHERE datname = $1 AND application_name = $2 AND pid <> pg_backend_pid()",
        &[&db, &WORKER_APP],
    )
    .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    .unwrap_or_default()
}

/// Injects one fault; returns what it did.
fn inject(f: Fault, server: &Server, options: &str, cfg: &Config, db: &str, rng: &mut Rng) -> String {
    match f {
        Fault::Terminate => {
            let mut c = connect_retry(cfg);
            let backends = worker_backends(&mut c, db);
            let n = 1 + rng.below(3);
            let mut killed = vec![];
            for _ in 0..n.min(backends.len()) {
                let (pid, _) = rng.pick(&backends).clone();
                if !killed.contains(&pid) && c.query_one("SELECT pg_terminate_backend($1)", &[&pid]).map(|r| r.get::<_, bool>(0)).unwrap_or(false) {
                    killed.push(pid);
                }
            }
            format!("pg_terminate_backend of {} session(s) {killed:?}", killed.len())
        }
        Fault::Kill9 => {
            let mut c = connect_retry(cfg);
            let backends = worker_backends(&mut c, db);
            drop(c);
            // preferably one in the middle of a statement
            let active: Vec<_> = backends.iter().filter(|b| b.1 == "active").cloned().collect();
            let pool = if active.is_empty() { &backends } else { &active };
            if pool.is_empty() {
                return "kill -9: no worker backend to kill".into();
            }
            let (pid, state) = rng.pick(pool).clone();
            let ok = Command::new("kill").args(["-9", &pid.to_string()]).status().map(|s| s.success()).unwrap_or(false);
            assert!(ok, "kill -9 {pid} failed");
            // Once the postmaster has reaped it, it is restarting every session and
            // recovering; only then is a new connection a sign the server is back.
            let deadline = Instant::now() + Duration::from_secs(30);
            while Command::new("kill").args(["-0", &pid.to_string()]).stderr(std::process::Stdio::null()).status().is_ok_and(|s| s.success()) {
                assert!(Instant::now() < deadline, "backend {pid} was not reaped");
                thread::sleep(Duration::from_millis(10)); // bounded wait for the postmaster to notice
            }
            drop(connect_retry(cfg));
            format!("kill -9 of backend {pid} ({state})")
        }
        Fault::Restart => {
            let t = Instant::now();
            server.stop_immediate();
            server.start(options);
            drop(connect_retry(cfg));
            format!("pg_ctl stop -m immediate + start ({:.1}s)", t.elapsed().as_secs_f64())
        }
    }
}

/// The gist of why an outcome is unknown: the SQLSTATE of a FATAL, or the client's error.
fn short_reason(why: &str) -> String {
    if let Some(rest) = why.strip_prefix("FATAL ") {
        return format!("FATAL {}", &rest[..rest.len().min(5)]);
    }
    why.split(':').next().unwrap_or(why).chars().take(40).collect()
}

// ---- the test ------------------------------------------------------------------------------

#[test]
fn no_committed_operation_lost_or_doubled_under_faults() {
    let started = Instant::now();
    let server = Server::from_env();
    let options = server.options();
    let ops: usize = std::env::var("FAULT_OPS").ok().and_then(|s| s.parse().ok()).unwrap_or(2000);
    let seed: u64 = std::env::var("FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5EED_FA17);
    let db = TestDb::new("faults");
    // declared after the database, so dropped before it: the server is up to drop it
    let _keep = KeepRunning(&server, options.clone());
    let mut c = db.connect();
    for i in 0..CUSTOMERS {
        c.execute("SELECT billing.grant($1, $2, 'seed')", &[&customer(i), &initial(i)]).unwrap();
    }
    // Two of them slotted: their calls spread over 4 accounts, and the small one's gather
    // when a slot is short, so faults also land inside multi-account transactions.
    for i in 0..2 {
        c.execute("SELECT billing.set_slots($1, 4)", &[&customer(i)]).unwrap();
    }
    expect_ok(&mut c, "SELECT billing.grant('poor', 1, 'seed'); SELECT billing.debit('poor', 1, 'drain')");
    expect_ok(&mut c, &format!("SELECT billing.add_endpoint('{EP}', 'stripe'); SELECT billing.add_secret('{EP}', '{SECRET}')"));
    drop(c);

    let mut cfg = db.config();
    cfg.application_name(WORKER_APP).connect_timeout(Duration::from_secs(10)).options("-c statement_timeout=60000");
    let mut check_cfg = db.config();
    check_cfg.application_name("billing-faults-check").connect_timeout(Duration::from_secs(10));

    let shared = Arc::new(Shared {
        logs: (0..THREADS).map(|_| Mutex::new(vec![])).collect(),
        done: AtomicUsize::new(0),
        signal: (Mutex::new(()), Condvar::new()),
        reconnects: AtomicUsize::new(0),
    });
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (cfg, shared) = (cfg.clone(), shared.clone());
            thread::Builder::new().name(format!("load-{t}")).spawn(move || worker(t, ops, seed, cfg, shared)).unwrap()
        })
        .collect();

    // Faults at fixed points of the load (counted in operations, not time).
    use Fault::*;
    let plan =
        [Terminate, Kill9, Restart, Kill9, Terminate, Restart, Terminate, Kill9, Restart, Restart, Kill9, Terminate, Kill9, Restart, Terminate];
    let total = THREADS * ops;
    let mut rng = Rng::new(seed);
    let mut injected: BTreeMap<Fault, usize> = BTreeMap::new();
    let mut reports: Vec<Report> = vec![];
    for (i, f) in plan.iter().enumerate() {
        let at = total * (i + 1) / (plan.len() + 1);
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut g = shared.signal.0.lock().unwrap();
        while shared.done.load(Ordering::SeqCst) < at {
            assert!(Instant::now() < deadline, "the load stalled at {} of {total} operations", shared.done.load(Ordering::SeqCst));
            if workers.iter().all(|w| w.is_finished()) {
                break;
            }
            g = shared.signal.1.wait_timeout(g, Duration::from_millis(500)).unwrap().0;
        }
        drop(g);
        let what = inject(*f, &server, &options, &check_cfg, &db.name, &mut rng);
        *injected.entry(*f).or_default() += 1;
        let r = check(&check_cfg, &shared, &format!("after fault {} at op {} ({what})", i + 1, shared.done.load(Ordering::SeqCst)));
        println!("faults: {}", r.describe());
        reports.push(r);
    }
    for w in workers {
        w.join().expect("a load thread panicked");
    }
    let r = check(&check_cfg, &shared, "end of the load, before retries");
    println!("faults: {}", r.describe());
    reports.push(r);

    // Settle every unknown operation by retrying it with its own key.
    let mut c = connect_retry(&check_cfg);
    let (mut replayed, mut applied_now, mut absent) = (0, 0, 0);
    let mut retry_problems = vec![];
    let mut unknown_why: Vec<String> = vec![];
    for log in &shared.logs {
        for rec in log.lock().unwrap().iter_mut() {
            let Outcome::Unknown(why) = &rec.outcome else { continue };
            unknown_why.push(short_reason(why));
            match retry(&mut c, &rec.op) {
                Ok(true) => replayed += 1,
                Ok(false) => applied_now += 1,
                Err(e) if e.starts_with("ATOMICITY") => retry_problems.push(format!("{} {}: {e}", rec.op.kind(), op_id(&rec.op))),
                Err(e) => {
                    // refused again (e.g. the poor customer): then it never took effect
                    absent += 1;
                    rec.outcome = Outcome::Failed(format!("retry: {e} (first: {why})"));
                    continue;
                }
            }
            rec.outcome = Outcome::Committed;
        }
    }
    let mut end = check(&check_cfg, &shared, "end, after retrying every unknown operation");
    end.problems.extend(retry_problems);
    // Every operation settled: the balances are exactly what the log says.
    let recs = shared.snapshot();
    let want = model(&recs);
    for (cust, want) in &want {
        match c.query_one("SELECT billing.balance($1)", &[cust]) {
            Ok(r) if r.get::<_, i64>(0) == *want => {}
            Ok(r) => end.problems.push(format!("{cust}: balance {} but the log adds up to {want}", r.get::<_, i64>(0))),
            Err(e) => end.problems.push(format!("{cust}: {}", msg(&e))),
        }
    }
    let granted = scalar_i64(&mut c, "SELECT count(*) FROM billing.journal WHERE idempotency_key LIKE 'stripe:purchase:%'");
    let bought = recs.iter().filter_map(|r| match (&r.op, &r.outcome) {
        (Op::Deliver { purchase, .. }, Outcome::Committed) => Some(purchase.clone()),
        _ => None,
    });
    let bought = bought.collect::<std::collections::BTreeSet<_>>().len() as i64;
    if granted != bought {
        end.problems.push(format!("{granted} purchase grants in the journal, {bought} purchases delivered"));
    }
    let active = scalar_i64(&mut c, "SELECT count(*) FROM billing.reservations WHERE status = 'active'");
    // Transfer entries of the slotted customers' own accounts (gathers in, spreads out).
    let transfers = scalar_i64(&mut c, "SELECT count(*) FROM billing.journal WHERE customer IN ('c00', 'c01') AND kind = 'transfer'");
    println!("faults: {}", end.describe());
    reports.push(end);

    // The closing figures.
    let count = |f: &dyn Fn(&Outcome) -> bool| recs.iter().filter(|r| f(&r.outcome)).count();
    let first_unknown = replayed + applied_now + absent;
    let failed = count(&|o| matches!(o, Outcome::Failed(_))) - absent;
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &recs {
        *by_kind.entry(r.op.kind()).or_default() += 1;
    }
    // why operations failed or were left unknown, by kind of answer
    let mut why: BTreeMap<String, usize> = BTreeMap::new();
    for l in &shared.logs {
        for r in l.lock().unwrap().iter() {
            let w = match &r.outcome {
                Outcome::Failed(m) if m.starts_with("retry: ") => "unknown, then refused on retry".to_string(),
                Outcome::Failed(m) => format!("failed {}", &m[..m.len().min(5)]),
                _ => continue,
            };
            *why.entry(w).or_default() += 1;
        }
    }
    for u in &unknown_why {
        *why.entry(format!("unknown: {u}")).or_default() += 1;
    }
    println!("faults: outcomes other than committed: {why:?}");
    let lost: usize = reports.iter().map(|r| r.lost.len()).sum();
    let duplicated: usize = reports.iter().map(|r| r.duplicated.len()).sum();
    let problems: usize = reports.iter().map(|r| r.problems.len()).sum();
    println!(
        "faults summary: operations {} ({}), committed {}, failed cleanly {failed}, unknown {first_unknown} \
         (on retry: {replayed} replayed, {applied_now} applied once now, {absent} refused again); \
         faults injected {} ({}); checks {}; client reconnects {}; holds left open {active}; slot transfers {transfers}; \
         lost {lost}, duplicated {duplicated}, other problems {problems}; runtime {:.1}s",
        recs.len(),
        by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", "),
        recs.len() - failed - absent - first_unknown,
        injected.values().sum::<usize>(),
        injected.iter().map(|(k, n)| format!("{k:?} {n}")).collect::<Vec<_>>().join(", "),
        reports.len(),
        shared.reconnects.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    let bad: Vec<String> = reports.iter().filter(|r| !r.ok()).map(Report::describe).collect();
    assert!(lost == 0 && duplicated == 0 && bad.is_empty(), "lost {lost}, duplicated {duplicated}:\n{}", bad.join("\n"));
    assert_eq!(injected.values().sum::<usize>(), plan.len());
}
