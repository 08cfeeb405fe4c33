//! Shared helpers of the client-side integration tests: the server from `DATABASE_URL`,
//! one fresh database per test (dropped at the end), SQLSTATEs, the test clock, a PRNG.
#![allow(dead_code)]

use postgres::config::Host;
use postgres::{Client, Config, GenericClient, NoTls, Transaction};
use std::path::PathBuf;

/// The server the tests run against: `DATABASE_URL` (libpq key=value or URL form),
/// connected as a superuser.
pub fn server_config() -> Config {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "DATABASE_URL is not set. These tests need a PostgreSQL 15 server with the billing \
             extension installed, reachable as a superuser, e.g.\n  \
             source scripts/cluster.sh; cluster_start 54400\n  \
             DATABASE_URL=\"host=$PGHOST port=$PGPORT user=postgres dbname=postgres\" \
             cargo test -p billing-it"
        )
    });
    url.parse::<Config>().unwrap_or_else(|e| panic!("DATABASE_URL {url:?} does not parse: {e}"))
}

pub fn connect_config(cfg: &Config) -> Client {
    cfg.connect(NoTls).unwrap_or_else(|e| panic!("cannot connect ({cfg:?}): {e}"))
}

/// A fresh database with `CREATE EXTENSION billing`, dropped (WITH FORCE) when dropped.
pub struct TestDb {
    pub name: String,
    admin: Config,
}

impl TestDb {
    /// `tag` must be unique among the tests of one binary; the pid makes it unique
    /// among binaries running at once.
    pub fn new(tag: &str) -> TestDb {
        let admin = server_config();
        let name = format!("it_{}_{}", tag, std::process::id());
        assert!(name.len() <= 63, "database name too long: {name}");
        let mut c = connect_config(&admin);
        create_database(&mut c, &name);
        let db = TestDb { name, admin };
        db.connect().batch_execute("CREATE EXTENSION billing").unwrap_or_else(|e| panic!("CREATE EXTENSION billing: {}", msg(&e)));
        db
    }

    /// An empty database (no extension), e.g. to restore a dump into.
    pub fn empty(tag: &str) -> TestDb {
        let admin = server_config();
        let name = format!("it_{}_{}", tag, std::process::id());
        let mut c = connect_config(&admin);
        create_database(&mut c, &name);
        TestDb { name, admin }
    }

    pub fn config(&self) -> Config {
        let mut c = self.admin.clone();
        c.dbname(&self.name);
        c
    }

    /// A superuser connection to this database.
    pub fn connect(&self) -> Client {
        connect_config(&self.config())
    }

    /// A connection to this database as `role` (trust authentication in the test cluster).
    pub fn connect_as(&self, role: &str) -> Client {
        let mut c = self.config();
        c.user(role);
        c.password(""); // never reuse the superuser's password for another role
        connect_config(&c)
    }

    pub fn admin(&self) -> Client {
        connect_config(&self.admin)
    }

    /// Host (socket directory or name) and port, for the command-line tools.
    pub fn host_port(&self) -> (String, u16) {
        let host = match self.admin.get_hosts().first() {
            Some(Host::Unix(p)) => p.display().to_string(),
            Some(Host::Tcp(h)) => h.clone(),
            None => std::env::var("PGHOST").unwrap_or_else(|_| "/var/run/postgresql".into()),
        };
        let port = self.admin.get_ports().first().copied().unwrap_or(5432);
        (host, port)
    }

    pub fn user(&self) -> String {
        self.admin.get_user().unwrap_or("postgres").to_string()
    }
}

fn create_database(c: &mut Client, name: &str) {
    for sql in [format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"), format!("CREATE DATABASE {name}")] {
        c.batch_execute(&sql).unwrap_or_else(|e| panic!("{sql}: {}", msg(&e)));
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut c) = self.admin.connect(NoTls) {
            let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
        }
    }
}

/// The PostgreSQL binaries (pg_dump, pg_restore): `PGBIN`, else the system PostgreSQL 15.
pub fn pg_bin(tool: &str) -> PathBuf {
    let dir = std::env::var("PGBIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
    PathBuf::from(dir).join(tool)
}

/// The SQLSTATE of a server error, or a panic for anything else (I/O, protocol).
pub fn sqlstate(e: &postgres::Error) -> String {
    match e.code() {
        Some(c) => c.code().to_string(),
        None => panic!("not a server error: {e}"),
    }
}

/// The server's message, for assertions that print it.
pub fn msg(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} {}", d.code().code(), d.message()),
        None => e.to_string(),
    }
}

/// Runs a statement that must fail with `code`. In a transaction (see [`at`]) it runs in
/// a savepoint, so the transaction goes on; alone, in a transaction rolled back.
pub fn expect_code(c: &mut impl GenericClient, sql: &str, code: &str) {
    let mut t = c.transaction().unwrap_or_else(|e| panic!("BEGIN/SAVEPOINT: {}", msg(&e)));
    match t.batch_execute(sql) {
        Ok(()) => panic!("expected SQLSTATE {code}, but this succeeded: {sql}"),
        Err(e) => assert_eq!(sqlstate(&e), code, "wrong SQLSTATE for {sql}: {}", msg(&e)),
    }
}

pub fn expect_ok(c: &mut impl GenericClient, sql: &str) {
    if let Err(e) = c.batch_execute(sql) {
        panic!("expected success: {sql}\n  got {}", msg(&e));
    }
}

pub fn scalar_i64(c: &mut impl GenericClient, sql: &str) -> i64 {
    c.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {}", msg(&e))).get(0)
}

pub fn verify_clean(c: &mut impl GenericClient) {
    if let Err(e) = verify(c) {
        panic!("{e}");
    }
}

/// `billing.verify()` as a result: `Err` lists every inconsistency it reported. The
/// tests' time runs in 2030, after the real now, so it verifies with the clock at
/// 'infinity' (in a transaction or savepoint of its own): `future_entry` is the one check
/// that reads the clock, and tests/clock.rs covers it.
pub fn verify(c: &mut impl GenericClient) -> Result<(), String> {
    let mut t = c.transaction().map_err(|e| msg(&e))?;
    t.batch_execute("SET LOCAL billing.clock = 'infinity'").map_err(|e| msg(&e))?;
    let rows = t.query("SELECT customer, check_name, expected, actual, detail FROM billing.verify()", &[]).map_err(|e| msg(&e))?;
    if rows.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "  {:?} {:?} expected {:?} actual {:?} {:?}",
                r.get::<_, Option<String>>(0),
                r.get::<_, Option<String>>(1),
                r.get::<_, Option<i64>>(2),
                r.get::<_, Option<i64>>(3),
                r.get::<_, Option<String>>(4)
            )
        })
        .collect();
    Err(format!("billing.verify() found {} inconsistencies:\n{}", rows.len(), lines.join("\n")))
}

// ---- the test clock: microseconds since 2030-01-01 00:00:00 UTC ----

/// 2030-01-01T00:00:00Z as Unix seconds.
pub const BASE_UNIX: i64 = 1_893_456_000;

/// A `timestamptz` literal for `t` microseconds after 2030-01-01 00:00:00 UTC.
pub fn ts(t: i64) -> String {
    let us = BASE_UNIX * 1_000_000 + t;
    let secs = us.div_euclid(1_000_000);
    let frac = us.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // civil_from_days (H. Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{frac:06}+00", sod / 3600, sod % 3600 / 60, sod % 60)
}

/// A transaction at test time `t` (see [`ts`]): `billing.clock` holds for one
/// transaction only (`SET LOCAL`). Commit it, or drop it to roll back.
pub fn at(c: &mut Client, t: i64) -> Transaction<'_> {
    let mut tx = c.transaction().unwrap_or_else(|e| panic!("BEGIN: {}", msg(&e)));
    tx.batch_execute(&format!("SET LOCAL billing.clock = '{}'", ts(t))).unwrap_or_else(|e| panic!("SET LOCAL billing.clock: {}", msg(&e)));
    tx
}

/// SQL turning a timestamptz expression into microseconds since the base.
pub fn micros_sql(expr: &str) -> String {
    format!("((extract(epoch from {expr}) * 1000000)::bigint - {})", BASE_UNIX * 1_000_000)
}

// ---- a small deterministic PRNG (SplitMix64) ----

#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        assert!(lo <= hi);
        let span = (hi - lo) as u64 + 1;
        lo + (self.next_u64() % span) as i64
    }
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0);
        (self.next_u64() % n as u64) as usize
    }
    /// True with probability `p` percent.
    pub fn pct(&mut self, p: u64) -> bool {
        self.next_u64() % 100 < p
    }
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

/// Runs `f(thread index, own connection)` on `n` threads that start together (at a
/// barrier, no sleeps); thread `i` connects with `config(i)`.
pub fn race_with<T: Send + 'static>(
    config: impl Fn(usize) -> Config,
    n: usize,
    f: impl Fn(usize, &mut Client) -> T + Send + Sync + 'static,
) -> Vec<T> {
    use std::sync::{Arc, Barrier};
    let f = Arc::new(f);
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (f, barrier, cfg) = (f.clone(), barrier.clone(), config(i));
            std::thread::spawn(move || {
                let mut c = connect_config(&cfg);
                barrier.wait();
                f(i, &mut c)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().expect("a racing thread panicked")).collect()
}

/// `race_with` on one test database.
pub fn race<T: Send + 'static>(db: &TestDb, n: usize, f: impl Fn(usize, &mut Client) -> T + Send + Sync + 'static) -> Vec<T> {
    let cfg = db.config();
    race_with(move |_| cfg.clone(), n, f)
}
