//! Hostile and malformed input at the SQL level, and least privilege for the webhook
//! receiver. Every hostile call must fail with a clear SQLSTATE (never XX000, the code of
//! a Rust panic turned into an ERROR), change no table of the billing schema (row counts
//! of every table compared before and after), and leave the backend alive (`SELECT
//! pg_backend_pid()` on the same connection answers the same pid; the postmaster never
//! restarted). Each test collects every deviation and fails once, listing them all.
mod common;
mod stripe;

use common::*;
use postgres::types::ToSql;
use postgres::Client;

const SECRET: &str = "whsec_h0stile_S3CRET_must_never_leak_4b1d";
const EP: &str = "stripe-hostile";
const STD_EP: &str = "std-hostile";
/// base64 of "0123456789abcdef0123456789abcdef"
const STD_SECRET: &str = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Row counts of every table of the billing schema.
fn counts(c: &mut Client) -> Vec<(String, i64)> {
    let tables: Vec<String> = c
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'billing' AND c.relkind IN ('r', 'p') ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    tables
        .into_iter()
        .map(|t| {
            let n = scalar_i64(c, &format!("SELECT count(*) FROM billing.{t}"));
            (t, n)
        })
        .collect()
}

fn diff(before: &[(String, i64)], after: &[(String, i64)]) -> String {
    let mut out = vec![];
    for (t, n) in after {
        let b = before.iter().find(|x| &x.0 == t).map_or(0, |x| x.1);
        if b != *n {
            out.push(format!("{t} {b} -> {n}"));
        }
    }
    out.join(", ")
}

/// Runs cases on one connection, collecting deviations.
struct Cases<'a> {
    c: &'a mut Client,
    /// A superuser connection to the same database, for the row counts.
    admin: Client,
    pid: i32,
    started: String,
    failures: Vec<String>,
    ran: usize,
}

impl<'a> Cases<'a> {
    fn new(c: &'a mut Client, admin: Client) -> Cases<'a> {
        let r = c.query_one("SELECT pg_backend_pid(), pg_postmaster_start_time()::text", &[]).unwrap();
        Cases { pid: r.get(0), started: r.get(1), c, admin, failures: vec![], ran: 0 }
    }

    /// The same backend still answers; a dead one ends the test at once.
    fn alive(&mut self, name: &str) {
        match self.c.query_one("SELECT pg_backend_pid()", &[]) {
            Ok(r) if r.get::<_, i32>(0) == self.pid => {}
            Ok(r) => panic!("{name}: backend changed from {} to {}", self.pid, r.get::<_, i32>(0)),
            Err(e) => panic!("{name}: the backend did not survive: {e}\nearlier deviations:\n  {}", self.failures.join("\n  ")),
        }
    }

    /// `sql` must fail with one of `codes`, change no table, and leave the backend alive.
    /// Returns the error for further checks.
    fn refuse(&mut self, name: &str, sql: &str, params: Params, codes: &[&str]) -> Option<postgres::error::DbError> {
        self.ran += 1;
        let before = counts(&mut self.admin);
        let r = self.c.query(sql, params);
        let mut out = None;
        match r {
            Ok(rows) => self.failures.push(format!("{name}: succeeded ({} rows), expected SQLSTATE {codes:?}", rows.len())),
            Err(e) => match e.as_db_error() {
                Some(d) => {
                    if !codes.contains(&d.code().code()) {
                        self.failures.push(format!("{name}: SQLSTATE {} ({}), expected {codes:?}", d.code().code(), d.message()));
                    }
                    out = Some(d.clone());
                }
                None => self.failures.push(format!("{name}: not a server error: {e}")),
            },
        }
        self.alive(name);
        let after = counts(&mut self.admin);
        if before != after {
            self.failures.push(format!("{name}: changed rows although refused: {}", diff(&before, &after)));
        }
        out
    }

    /// `sql` must succeed (e.g. NULL in an argument with a default means the default).
    fn accept(&mut self, name: &str, sql: &str, params: Params) -> Vec<postgres::Row> {
        self.ran += 1;
        let r = match self.c.query(sql, params) {
            Ok(rows) => rows,
            Err(e) => {
                self.failures.push(format!("{name}: expected success, got {}", msg(&e)));
                vec![]
            }
        };
        self.alive(name);
        r
    }

    /// `sql` must either succeed or fail with one of `codes`; failing, it changes nothing.
    fn accept_or_refuse(&mut self, name: &str, sql: &str, params: Params, codes: &[&str]) -> Option<Vec<postgres::Row>> {
        self.ran += 1;
        let before = counts(&mut self.admin);
        let r = self.c.query(sql, params);
        let out = match r {
            Ok(rows) => Some(rows),
            Err(e) => {
                match e.as_db_error() {
                    Some(d) if codes.contains(&d.code().code()) => {}
                    _ => self.failures.push(format!("{name}: {} (expected success or {codes:?})", msg(&e))),
                }
                None
            }
        };
        self.alive(name);
        if out.is_none() {
            let after = counts(&mut self.admin);
            if before != after {
                self.failures.push(format!("{name}: changed rows although refused: {}", diff(&before, &after)));
            }
        }
        out
    }

    fn check(&mut self, name: &str, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.failures.push(format!("{name}: {}", what()));
        }
    }

    fn finish(mut self, test: &str) {
        let now: String = self.admin.query_one("SELECT pg_postmaster_start_time()::text", &[]).unwrap().get(0);
        assert_eq!(now, self.started, "{test}: the server restarted during the test (a backend crashed)");
        assert!(self.failures.is_empty(), "{test}: {} of {} cases deviated:\n  {}", self.failures.len(), self.ran, self.failures.join("\n  "));
        println!("{test}: {} cases, all refused cleanly or accepted as documented", self.ran);
    }
}

fn first_text(rows: Vec<postgres::Row>) -> String {
    rows.first().map(|r| r.get(0)).unwrap_or_else(|| panic!("the setup step above failed"))
}

fn setup_endpoints(c: &mut Client) {
    for sql in [
        format!("SELECT billing.add_endpoint('{EP}', 'stripe')"),
        format!("SELECT billing.add_secret('{EP}', '{SECRET}')"),
        format!("SELECT billing.add_endpoint('{STD_EP}', 'standard')"),
        format!("SELECT billing.add_secret('{STD_EP}', '{STD_SECRET}')"),
    ] {
        expect_ok(c, &sql);
    }
}

const INGEST: &str = "SELECT * FROM billing.ingest($1, $2::text::jsonb, $3)";
const INBOX: &str = "INSERT INTO billing.inbox (endpoint, headers, body) VALUES ($1, $2::text::jsonb, $3)";

fn deep(open: &str, close: &str, n: usize) -> String {
    format!("{}1{}", open.repeat(n), close.repeat(n))
}

/// Webhook deliveries: oversized, deep, not events, invalid UTF-8, NUL bytes, bad or
/// missing signatures, huge and weird headers. Then a genuine delivery still works.
#[test]
fn webhook_input_refused_cleanly() {
    let db = TestDb::new("hostile_wh");
    let mut c = db.connect();
    setup_endpoints(&mut c);
    // loads the library, so its settings exist
    expect_ok(&mut c, "SELECT billing.verify_signature('stripe', '{}', '{}', '')");
    let mut k = Cases::new(&mut c, db.connect());
    let now = stripe::now_unix();
    let good = stripe::checkout_completed("evt_good", "cs_good", "pi_good", "hc", 10, now);
    let signed = |body: &str| stripe::signed_headers(SECRET, body);
    let ep: &str = EP;

    // -- size: refused before anything else, at the default limit and a lowered one
    let mut big = good.clone();
    big.push_str(&" ".repeat((1 << 20) + 1 - big.len()));
    let h = signed(&big);
    k.refuse("body of 1 MiB + 1 (default limit), signed", INGEST, &[&ep, &h, &big], &["BL014"]);
    k.refuse("same through the inbox", INBOX, &[&ep, &h, &big], &["BL014"]);
    k.accept("lower the limit", "SET billing.webhook_max_bytes = 1024", &[]);
    let mut over = good.clone();
    over.push_str(&" ".repeat(1025 - over.len()));
    let h = signed(&over);
    k.refuse("body of 1025 bytes over a 1024 limit, signed", INGEST, &[&ep, &h, &over], &["BL014"]);
    let junk = stripe::headers(&[("Stripe-Signature", "junk")]);
    k.refuse("over the limit with a junk signature: size first", INGEST, &[&ep, &junk, &over], &["BL014"]);
    k.refuse("over the limit, unknown endpoint", INGEST, &[&"nope", &junk, &over], &["BL014", "BL013"]);
    k.accept("restore the limit", "RESET billing.webhook_max_bytes", &[]);

    // -- JSON nested thousands deep, and bodies that are not events (all correctly signed)
    let deep_bodies = [
        ("array nested 5000 deep", deep("[", "]", 5000)),
        ("object nested 5000 deep", deep("{\"a\":", "}", 5000)),
        (
            "event whose data.object nests 3000 deep",
            format!(r#"{{"id":"evt_deep","type":"x","created":1,"data":{{"object":{}}}}}"#, deep("{\"a\":", "}", 3000)),
        ),
        ("mixed nesting 20000 deep", deep("[{\"a\":", "}]", 10000)),
    ];
    for (name, body) in &deep_bodies {
        let h = signed(body);
        k.refuse(&format!("body: {name}"), INGEST, &[&ep, &h, body], &["BL012"]);
    }
    let id300 = format!(r#"{{"id":"{}","type":"t","created":1}}"#, "e".repeat(300));
    let not_events = [
        ("empty body", String::new()),
        ("not JSON", "not json".to_string()),
        ("a JSON array", "[]".to_string()),
        ("a JSON string", "\"evt\"".to_string()),
        ("an empty object", "{}".to_string()),
        ("created as a string", r#"{"id":"evt_s","type":"t","created":"1"}"#.to_string()),
        ("created beyond bigint", r#"{"id":"evt_b","type":"t","created":99999999999999999999}"#.to_string()),
        ("created 1e400", r#"{"id":"evt_f","type":"t","created":1e400}"#.to_string()),
        ("id of 300 characters", id300),
        ("id an object", r#"{"id":{"x":1},"type":"t","created":1}"#.to_string()),
        ("truncated JSON", good[..good.len() / 2].to_string()),
        ("trailing garbage", format!("{good}xyz")),
        ("two documents", format!("{good}{good}")),
        ("lone surrogate escape", r#"{"id":"evt_\ud800","type":"t","created":1}"#.to_string()),
    ];
    for (name, body) in &not_events {
        let h = signed(body);
        k.refuse(&format!("body: {name}"), INGEST, &[&ep, &h, body], &["BL012"]);
    }

    // -- bytes Postgres will not take as text
    let invalid_utf8: Vec<u8> = [b"{\"id\":\"evt_".as_slice(), &[0xff, 0xfe, 0xc3, 0x28], b"\",\"type\":\"t\",\"created\":1}"].concat();
    let h = signed("x");
    k.refuse(
        "body of invalid UTF-8 (convert_from)",
        "SELECT * FROM billing.ingest($1, $2::text::jsonb, convert_from($3::bytea, 'UTF8'))",
        &[&ep, &h, &invalid_utf8],
        &["22021"],
    );
    k.refuse(
        "invalid UTF-8 through the inbox",
        "INSERT INTO billing.inbox (endpoint, headers, body) VALUES ($1, $2::text::jsonb, convert_from($3::bytea, 'UTF8'))",
        &[&ep, &h, &invalid_utf8],
        &["22021"],
    );
    k.refuse("invalid UTF-8 literal", &format!("SELECT * FROM billing.ingest('{EP}', '{{}}', E'\\xff\\xfe')"), &[], &["22021"]);
    let nul_body = format!("{}\0{}", &good[..20], &good[20..]);
    k.refuse("body with a NUL byte (text parameter)", INGEST, &[&ep, &h, &nul_body], &["22021"]);
    k.refuse("body with chr(0)", &format!("SELECT * FROM billing.ingest('{EP}', '{{}}', 'a' || chr(0))"), &[], &["54000"]);
    k.refuse(
        "body with a NUL byte (convert_from)",
        "SELECT * FROM billing.ingest($1, $2::text::jsonb, convert_from($3::bytea, 'UTF8'))",
        &[&ep, &h, &b"{\"id\":\"a\0b\"}".to_vec()],
        &["22021"],
    );
    k.refuse("headers with \\u0000", INGEST, &[&ep, &r#"{"Stripe-Signature":"t=1\u0000"}"#, &good], &["22P05"]);
    k.refuse("endpoint name with a NUL byte", INGEST, &[&"stripe-\0hostile", &h, &good], &["22021"]);

    // -- signatures: wrong, missing, stale, future; unknown endpoint
    let wrong = stripe::headers(&[("Stripe-Signature", &stripe::sign("whsec_other", now, good.as_bytes()))]);
    k.refuse("signed with another secret", INGEST, &[&ep, &wrong, &good], &["BL010"]);
    k.refuse("no headers at all", INGEST, &[&ep, &"{}", &good], &["BL010"]);
    let stale = stripe::headers(&[("Stripe-Signature", &stripe::sign(SECRET, now - 3600, good.as_bytes()))]);
    k.refuse("genuine but an hour old", INGEST, &[&ep, &stale, &good], &["BL011"]);
    let future = stripe::headers(&[("Stripe-Signature", &stripe::sign(SECRET, now + 3600, good.as_bytes()))]);
    k.refuse("genuine but an hour ahead", INGEST, &[&ep, &future, &good], &["BL011"]);
    let h = signed(&good);
    k.refuse("unknown endpoint", INGEST, &[&"no-such-endpoint", &h, &good], &["BL013"]);
    k.refuse("endpoint of 10,000 characters", INGEST, &[&"e".repeat(10_000), &h, &good], &["BL013"]);
    let tampered = good.replace("\"credits\":\"10\"", "\"credits\":\"99999\"");
    k.refuse("body changed after signing", INGEST, &[&ep, &h, &tampered], &["BL010"]);
    k.refuse("genuine signature, wrong endpoint kind (standard)", INGEST, &[&STD_EP, &h, &good], &["BL010"]);

    // -- huge and weird headers (with a genuine body)
    let sig = stripe::sign(SECRET, now, good.as_bytes());
    let many_v1 = format!("t={now},{}", format!("v1={},", "ab".repeat(32)).repeat(3000));
    let weird_headers: Vec<(&str, String)> = vec![
        ("200 KB Stripe-Signature of decoy v1s", stripe::headers(&[("Stripe-Signature", &many_v1)])),
        ("1 MB header value of junk", stripe::headers(&[("Stripe-Signature", &"=,".repeat(500_000))])),
        ("t beyond bigint", stripe::headers(&[("Stripe-Signature", &format!("t=99999999999999999999999,{}", &sig[sig.find("v1").unwrap()..]))])),
        ("t negative", stripe::headers(&[("Stripe-Signature", &format!("t=-1,{}", &sig[sig.find("v1").unwrap()..]))])),
        ("two t", stripe::headers(&[("Stripe-Signature", &format!("t={now},{sig}"))])),
        ("control characters", stripe::headers(&[("Stripe-Signature", "t=1\u{1},v1=\u{7f}\r\n")])),
        ("non-ASCII", stripe::headers(&[("Stripe-Signature", "t=١٢٣,v1=😀😀")])),
        ("signature header is a number", r#"{"Stripe-Signature": 12345}"#.to_string()),
        ("signature header is an object", format!(r#"{{"Stripe-Signature": {{"v": "{sig}"}}}}"#)),
        ("signature header is an array", format!(r#"{{"Stripe-Signature": ["{sig}"]}}"#)),
        ("signature header is null", r#"{"Stripe-Signature": null}"#.to_string()),
        ("headers are an array", format!(r#"["Stripe-Signature", "{sig}"]"#)),
        ("headers are a string", format!(r#""Stripe-Signature: {sig}""#)),
        ("headers are a number", "42".to_string()),
        ("header name of 10,000 characters", stripe::headers(&[(&"X".repeat(10_000), &sig)])),
        ("empty header name", stripe::headers(&[("", &sig)])),
        ("look-alike header name", stripe::headers(&[("Stripe-Signature ", &sig), ("Strіpe-Signature", &sig)])),
        ("10,000 headers of junk", {
            let names: Vec<String> = (0..10_000).map(|i| format!("x-h{i}")).collect();
            let pairs: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v1=00")).collect();
            stripe::headers(&pairs)
        }),
        ("headers nested 100 deep", format!(r#"{{"Stripe-Signature": {}}}"#, deep("{\"a\":", "}", 100))),
    ];
    for (name, h) in &weird_headers {
        k.refuse(&format!("headers: {name}"), INGEST, &[&ep, h, &good], &["BL010", "BL011"]);
    }

    // -- Standard Webhooks headers
    let std_body = r#"{"type":"x"}"#;
    let ts = now.to_string();
    let big_id = "m".repeat(100_000);
    let std_cases: Vec<(&str, String)> = vec![
        (
            "webhook-id of 100,000 characters",
            stripe::headers(&[("webhook-id", &big_id), ("webhook-timestamp", &ts), ("webhook-signature", "v1,AAAA")]),
        ),
        ("webhook-id with a dot", stripe::headers(&[("webhook-id", "a.b"), ("webhook-timestamp", &ts), ("webhook-signature", "v1,AAAA")])),
        ("timestamp -1", stripe::headers(&[("webhook-id", "m1"), ("webhook-timestamp", "-1"), ("webhook-signature", "v1,AAAA")])),
        ("timestamp 1e9", stripe::headers(&[("webhook-id", "m1"), ("webhook-timestamp", "1e9"), ("webhook-signature", "v1,AAAA")])),
        (
            "timestamp beyond bigint",
            stripe::headers(&[("webhook-id", "m1"), ("webhook-timestamp", "99999999999999999999"), ("webhook-signature", "v1,AAAA")]),
        ),
        (
            "10,000 signatures",
            stripe::headers(&[("webhook-id", "m1"), ("webhook-timestamp", &ts), ("webhook-signature", &"v1,AAAA ".repeat(10_000))]),
        ),
        ("no headers", "{}".to_string()),
    ];
    for (name, h) in &std_cases {
        k.refuse(&format!("standard: {name}"), INGEST, &[&STD_EP, h, &std_body], &["BL010"]);
    }

    // -- a verified event whose amount is beyond bigint: stored as failed, no credits
    let huge_credits =
        good.replace("evt_good", "evt_huge").replace("pi_good", "pi_huge").replace("\"credits\":\"10\"", "\"credits\":\"99999999999999999999\"");
    let h = signed(&huge_credits);
    let journal = scalar_i64(k.c, "SELECT count(*) FROM billing.journal");
    let rows = k.accept("verified event with credits beyond bigint", INGEST, &[&ep, &h, &huge_credits]);
    let status: Option<String> = rows.first().map(|r| r.get(1));
    k.check("credits beyond bigint", status.as_deref() == Some("failed"), || format!("status {status:?}, expected failed (kept, applied nothing)"));
    let after = scalar_i64(k.c, "SELECT count(*) FROM billing.journal");
    k.check("credits beyond bigint", after == journal, || format!("journal grew from {journal} to {after}"));

    // -- and a genuine delivery still goes through (the endpoint works; header names any case)
    let h = stripe::headers(&[("STRIPE-SIGNATURE", &stripe::sign(SECRET, stripe::now_unix(), good.as_bytes()))]);
    let rows = k.accept("genuine delivery", INGEST, &[&ep, &h, &good]);
    let status: Option<String> = rows.first().map(|r| r.get(1));
    k.check("genuine delivery", status.as_deref() == Some("applied"), || format!("status {status:?}"));
    let bal = scalar_i64(k.c, "SELECT billing.balance('hc')");
    k.check("genuine delivery", bal == 10, || format!("balance of hc is {bal}, not 10"));
    verify_clean(k.c);
    k.finish("webhook_input_refused_cleanly");
}

/// Every ledger and webhook function with NULL in each argument, zero, negative and
/// beyond-bigint amounts, over-long and malformed keys and customer ids, bad intervals,
/// deep and huge metadata.
#[test]
fn ledger_arguments_refused_cleanly() {
    let db = TestDb::new("hostile_args");
    let mut c = db.connect();
    setup_endpoints(&mut c);
    expect_ok(&mut c, "SELECT billing.grant('hl', 100000, 'seed')");
    let entry: String = c.query_one("SELECT entry_id::text FROM billing.debit('hl', 10, 'd0')", &[]).unwrap().get(0);
    let rid: String = c.query_one("SELECT billing.reserve('hl', 10, 'r0', '1 hour')::text", &[]).unwrap().get(0);
    let mut k = Cases::new(&mut c, db.connect());
    let n = "NULL";

    // -- NULL in every argument. Arguments with a DEFAULT take the default for NULL;
    //    every other NULL is 22023.
    let e = format!("'{entry}'");
    let r = format!("'{rid}'");
    let refused: Vec<String> = vec![
        format!("billing.grant({n}, 1, 'k1')"),
        format!("billing.grant('hl', {n}, 'k1')"),
        format!("billing.grant('hl', 1, {n})"),
        format!("billing.debit({n}, 1, 'k1')"),
        format!("billing.debit('hl', {n}, 'k1')"),
        format!("billing.debit('hl', 1, {n})"),
        format!("billing.reserve({n}, 1, 'k1')"),
        format!("billing.reserve('hl', {n}, 'k1')"),
        format!("billing.reserve('hl', 1, {n})"),
        format!("billing.reserve('hl', 1, 'k1', {n})"),
        format!("billing.settle({n}, 1)"),
        format!("billing.settle({r}, {n})"),
        format!("billing.extend({n}, '1 hour')"),
        format!("billing.extend({r}, {n})"),
        format!("billing.release({n})"),
        format!("billing.refund({n})"),
        format!("billing.refund({n}, 1, 'k1')"),
        format!("billing.balance({n})"),
        format!("billing.balance_at({n}, now())"),
        format!("billing.balance_at('hl', {n})"),
        format!("billing.set_overdraft({n}, 1)"),
        format!("billing.set_overdraft('hl', {n})"),
        format!("billing.set_frozen({n}, true)"),
        format!("billing.set_frozen('hl', {n})"),
        format!("billing.verify_signature({n}, '{{}}', '{{}}', 'b')"),
        format!("billing.verify_signature('stripe', {n}, '{{}}', 'b')"),
        format!("billing.verify_signature('stripe', '{{}}', {n}, 'b')"),
        format!("billing.verify_signature('stripe', '{{}}', '{{}}', {n})"),
        format!("billing.ingest({n}, '{{}}', 'b')"),
        format!("billing.ingest('{EP}', {n}, 'b')"),
        format!("billing.ingest('{EP}', '{{}}', {n})"),
        format!("billing.replay({n}, 'evt')"),
        format!("billing.replay('stripe', {n})"),
        format!("billing.replay({n}::text)"),
        format!("billing.link_customer({n}, 'cus_1')"),
        format!("billing.link_customer('hl', {n})"),
        format!("billing.add_endpoint({n}, 'stripe')"),
        format!("billing.add_endpoint('ep2', {n})"),
        format!("billing.add_secret({n}, 'whsec_x')"),
        format!("billing.add_secret('{EP}', {n})"),
        format!("billing.remove_secret({n}, 'whsec_x')"),
        format!("billing.remove_secret('{EP}', {n})"),
        format!("billing.define_plan({n}, '{{}}')"),
        format!("billing.define_plan('p', '{{}}', {n})"),
        format!("billing.define_plan('p', '{{}}', 0, {n})"),
        format!("billing.define_topup({n}, 5)"),
        format!("billing.define_topup('usd:1', {n})"),
    ];
    for call in &refused {
        k.refuse(&format!("NULL: {call}"), &format!("SELECT * FROM {call}"), &[], &["22023"]);
    }
    // NULL meaning the documented default
    let d1: String = k.c.query_one("SELECT entry_id::text FROM billing.debit('hl', 7, 'd1')", &[]).unwrap().get(0);
    for call in [
        format!("billing.grant('hl', 1, 'kd1', {n}, {n}, {n}, {n})"),
        format!("billing.debit('hl', 1, 'kd2', {n})"),
        format!("billing.refund('{d1}', {n}, {n})"),
        format!("billing.maintenance({n})"),
        format!("billing.verify_signature('stripe', '{{}}', '{{}}', 'b', {n})"),
        format!("billing.define_plan('p', {n}, 0, '1 day', {n})"),
    ] {
        k.accept(&format!("NULL as the default: {call}"), &format!("SELECT * FROM {call}"), &[]);
    }
    let md: Option<String> = k.c.query_one("SELECT metadata::text FROM billing.journal WHERE idempotency_key = 'kd2'", &[]).unwrap().get(0);
    k.check("NULL metadata", md.as_deref() == Some("{}"), || format!("stored {md:?}"));

    // -- zero, negative, i64::MIN and beyond-bigint amounts
    for a in ["0", "-1", "-9223372036854775808"] {
        for call in [
            format!("billing.grant('hl', {a}, 'ka')"),
            format!("billing.debit('hl', {a}, 'ka')"),
            format!("billing.reserve('hl', {a}, 'ka')"),
            format!("billing.refund({e}, {a}, 'ka')"),
        ] {
            k.refuse(&format!("amount {a}: {call}"), &format!("SELECT * FROM {call}"), &[], &["22023"]);
        }
    }
    for a in ["-1", "-9223372036854775808"] {
        k.refuse(&format!("settle actual {a}"), &format!("SELECT * FROM billing.settle({r}, {a})"), &[], &["22023"]);
        k.refuse(&format!("overdraft limit {a}"), &format!("SELECT billing.set_overdraft('hl', {a})"), &[], &["22023"]);
    }
    for big in ["99999999999999999999", "9223372036854775808", "-9223372036854775809", "1e30"] {
        for call in [
            format!("billing.grant('hl', '{big}', 'kb')"),
            format!("billing.debit('hl', '{big}', 'kb')"),
            format!("billing.reserve('hl', '{big}', 'kb')"),
            format!("billing.settle({r}, '{big}')"),
            format!("billing.refund({e}, '{big}')"),
            format!("billing.set_overdraft('hl', '{big}')"),
        ] {
            // '1e30' is not even an integer literal: 22P02 (invalid text representation)
            k.refuse(&format!("amount {big}: {call}"), &format!("SELECT * FROM {call}"), &[], &["22003", "22P02"]);
        }
        let s: &str = big;
        k.refuse(
            &format!("amount {big} as a text parameter"),
            "SELECT * FROM billing.debit('hl', $1::text::bigint, 'kb')",
            &[&s],
            &["22003", "22P02"],
        );
    }
    k.refuse("amount as numeric beyond bigint", "SELECT * FROM billing.debit('hl', 99999999999999999999::numeric::bigint, 'kb')", &[], &["22003"]);
    k.refuse("settle far above the hold", &format!("SELECT * FROM billing.settle({r}, 9223372036854775807)"), &[], &["BL001"]);

    // -- over-long, empty and malformed keys and customer ids
    let long = "k".repeat(10_000);
    let multibyte_256 = "é".repeat(128); // 256 bytes
    let bad_keys: [(&str, &str); 3] = [("10,000 characters", &long), ("empty", ""), ("256 bytes of 2-byte characters", &multibyte_256)];
    for (what, key) in bad_keys {
        let key: &str = key;
        for (f, sql) in [
            ("grant", "SELECT billing.grant('hl', 1, $1)"),
            ("debit", "SELECT * FROM billing.debit('hl', 1, $1)"),
            ("reserve", "SELECT billing.reserve('hl', 1, $1)"),
        ] {
            k.refuse(&format!("key {what}: {f}"), sql, &[&key], &["22023"]);
        }
        let ent: &str = &entry;
        k.refuse(&format!("key {what}: refund"), "SELECT * FROM billing.refund($1::text::uuid, 1, $2)", &[&ent, &key], &["22023"]);
        for (f, sql) in [
            ("grant", "SELECT billing.grant($1, 1, 'kc')"),
            ("debit", "SELECT * FROM billing.debit($1, 1, 'kc')"),
            ("reserve", "SELECT billing.reserve($1, 1, 'kc')"),
            ("balance", "SELECT billing.balance($1)"),
            ("balance_at", "SELECT billing.balance_at($1, now())"),
            ("set_overdraft", "SELECT billing.set_overdraft($1, 5)"),
            ("set_frozen", "SELECT billing.set_frozen($1, true)"),
            ("link_customer", "SELECT * FROM billing.link_customer($1, 'cus_x')"),
        ] {
            k.refuse(&format!("customer {what}: {f}"), sql, &[&key], &["22023"]);
        }
    }
    let k255 = "é".repeat(127) + "k"; // 255 bytes: the longest key
    k.accept("key of exactly 255 bytes", "SELECT * FROM billing.debit('hl', 1, $1)", &[&k255.as_str()]);
    let invalid: &[u8] = &[0x6b, 0xff, 0xfe];
    k.refuse("key of invalid UTF-8", "SELECT * FROM billing.debit('hl', 1, convert_from($1::bytea, 'UTF8'))", &[&invalid], &["22021"]);
    k.refuse("customer of invalid UTF-8", "SELECT * FROM billing.debit(convert_from($1::bytea, 'UTF8'), 1, 'kn')", &[&invalid], &["22021"]);
    k.refuse("key with a NUL byte", "SELECT * FROM billing.debit('hl', 1, $1)", &[&"a\0b"], &["22021"]);
    k.refuse("customer with a NUL byte", "SELECT * FROM billing.debit($1, 1, 'kn')", &[&"h\0l"], &["22021"]);
    k.refuse("key with chr(0)", "SELECT * FROM billing.debit('hl', 1, 'a' || chr(0))", &[], &["54000"]);
    k.refuse("unknown customer", "SELECT * FROM billing.debit('nobody', 1, 'kn')", &[], &["BL003"]);
    k.refuse("unknown reservation", "SELECT * FROM billing.settle('00000000-0000-0000-0000-000000000001', 1)", &[], &["BL003"]);
    k.refuse(
        "a grant is not refundable",
        "SELECT * FROM billing.refund((SELECT entry_id FROM billing.journal WHERE idempotency_key = 'seed'))",
        &[],
        &["22023"],
    );
    k.refuse("refund beyond the debit", &format!("SELECT * FROM billing.refund({e}, 11, 'kr')"), &[], &["22023"]);

    // -- intervals and instants
    for ttl in ["-1 hour", "0", "1000000 years", "-178000000 years"] {
        k.refuse(&format!("reserve ttl {ttl}"), &format!("SELECT billing.reserve('hl', 1, 'kt', '{ttl}')"), &[], &["22023"]);
        k.refuse(&format!("extend ttl {ttl}"), &format!("SELECT billing.extend({r}, '{ttl}')"), &[], &["22023"]);
    }
    k.refuse("grant expiring in the past", "SELECT billing.grant('hl', 1, 'kx', expires_at => '-infinity')", &[], &["22023"]);
    k.accept("balance_at infinity", "SELECT billing.balance_at('hl', 'infinity')", &[]);
    k.accept("balance_at -infinity", "SELECT billing.balance_at('hl', '-infinity')", &[]);
    k.refuse("maintenance batch 0", "SELECT billing.maintenance(0)", &[], &["22023"]);
    k.refuse("maintenance batch -1", "SELECT billing.maintenance(-1)", &[], &["22023"]);

    // -- metadata: deep, out-of-range numbers, huge, big numbers kept exactly
    let deep_md = deep("{\"a\":", "}", 1000);
    k.refuse("metadata nested 1000 deep", "SELECT * FROM billing.debit('hl', 1, 'km1', $1::text::jsonb)", &[&deep_md.as_str()], &["22023"]);
    let deep_arr = deep("[", "]", 5000);
    k.refuse(
        "metadata array nested 5000 deep",
        "SELECT billing.grant('hl', 1, 'km2', metadata => $1::text::jsonb)",
        &[&deep_arr.as_str()],
        &["22023"],
    );
    // 1e400 is a valid jsonb number: accepted, and stored exactly (never as infinity or rounded)
    if k.accept_or_refuse("metadata with 1e400", "SELECT * FROM billing.debit('hl', 1, 'km3', '{\"x\": 1e400}')", &[], &["22023"]).is_some() {
        let same: bool =
            k.c.query_one("SELECT metadata = '{\"x\": 1e400}'::jsonb FROM billing.journal WHERE idempotency_key = 'km3'", &[]).unwrap().get(0);
        k.check("metadata with 1e400", same, || "accepted but stored altered".to_string());
    }
    k.refuse("headers nested 1000 deep", INGEST, &[&EP, &deep_md.as_str(), &"{}"], &["22023", "BL010"]);
    k.refuse("headers with 1e400", INGEST, &[&EP, &r#"{"x": 1e400}"#, &"{}"], &["22023", "BL010"]);
    let exact = r#"{"big": 123456789012345678901234567890, "tiny": 0.1000000000000000000001, "neg": -99999999999999999999}"#;
    if k.accept_or_refuse("metadata with numbers beyond f64", "SELECT * FROM billing.debit('hl', 1, 'km4', $1::text::jsonb)", &[&exact], &["22023"])
        .is_some()
    {
        let same: bool =
            k.c.query_one("SELECT metadata = $1::text::jsonb FROM billing.journal WHERE idempotency_key = 'km4'", &[&exact]).unwrap().get(0);
        let stored: String = k.c.query_one("SELECT metadata::text FROM billing.journal WHERE idempotency_key = 'km4'", &[]).unwrap().get(0);
        k.check("metadata with numbers beyond f64", same, || format!("accepted but stored altered: {stored} (sent {exact})"));
    }
    let huge_md = format!("{{{}}}", (0..50_000).map(|i| format!("\"k{i}\":\"{}\"", "v".repeat(20))).collect::<Vec<_>>().join(","));
    if k.accept_or_refuse(
        "metadata of 1.5 MB",
        "SELECT * FROM billing.debit('hl', 1, 'km5', $1::text::jsonb)",
        &[&huge_md.as_str()],
        &["22023", "54000"],
    )
    .is_some()
    {
        let same: bool =
            k.c.query_one("SELECT metadata = $1::text::jsonb FROM billing.journal WHERE idempotency_key = 'km5'", &[&huge_md.as_str()])
                .unwrap()
                .get(0);
        k.check("metadata of 1.5 MB", same, || "accepted but stored altered".into());
    }
    let wide = format!("[{}]", vec!["{}"; 200_000].join(","));
    k.accept_or_refuse(
        "metadata array of 200,000 objects",
        "SELECT billing.grant('hl', 1, 'km6', metadata => $1::text::jsonb)",
        &[&wide.as_str()],
        &["22023", "54000"],
    );

    verify_clean(k.c);
    k.finish("ledger_arguments_refused_cleanly");
}

/// Balances and sums near i64::MAX are refused with 22003, never wrapped, and every
/// view over them still reads.
#[test]
fn balances_near_i64_max_refused_not_wrapped() {
    let db = TestDb::new("hostile_max");
    let mut c = db.connect();
    let mut k = Cases::new(&mut c, db.connect());
    const MAX: i64 = i64::MAX;
    k.accept("grant i64::MAX", "SELECT billing.grant('max', $1, 'g1')", &[&MAX]);
    k.refuse("one more credit would overflow", "SELECT billing.grant('max', 1, 'g2')", &[], &["22003"]);
    k.refuse("another i64::MAX would overflow", "SELECT billing.grant('max', $1, 'g3')", &[&MAX], &["22003"]);
    let bal = scalar_i64(k.c, "SELECT billing.balance('max')");
    k.check("balance after refusals", bal == MAX, || format!("balance {bal}"));
    let d = first_text(k.accept("debit 5", "SELECT entry_id::text FROM billing.debit('max', 5, 'd1')", &[]));
    k.accept("grant 5 back to i64::MAX", "SELECT billing.grant('max', 5, 'g4')", &[]);
    k.refuse("refund over i64::MAX", &format!("SELECT * FROM billing.refund('{d}', 5, 'rf1')"), &[], &["22003"]);
    k.accept("debit everything", "SELECT * FROM billing.debit('max', $1, 'd2')", &[&MAX]);
    k.accept("grant i64::MAX again", "SELECT billing.grant('max', $1, 'g5')", &[&MAX]);
    let d2: String = k.c.query_one("SELECT entry_id::text FROM billing.journal WHERE idempotency_key = 'd2'", &[]).unwrap().get(0);
    k.refuse("refund of i64::MAX on a full balance", &format!("SELECT * FROM billing.refund('{d2}')"), &[], &["22003"]);
    let rid = first_text(k.accept("hold i64::MAX", "SELECT billing.reserve('max', $1, 'r1', '1 hour')::text", &[&MAX]));
    k.accept("grant i64::MAX while it is held", "SELECT billing.grant('max', $1, 'g6')", &[&MAX]);
    k.refuse("releasing the hold would overflow", &format!("SELECT * FROM billing.release('{rid}')"), &[], &["22003"]);
    k.refuse("settling at 0 would overflow", &format!("SELECT * FROM billing.settle('{rid}', 0)"), &[], &["22003"]);
    k.accept("settling in full does not", &format!("SELECT * FROM billing.settle('{rid}', $1)"), &[&MAX]);

    // a refund onto a grant of i64::MAX (the grant's own arithmetic: granted + refunded)
    k.accept("grant i64::MAX", "SELECT billing.grant('maxr', $1, 'g1')", &[&MAX]);
    let d3 = first_text(k.accept("debit 5", "SELECT entry_id::text FROM billing.debit('maxr', 5, 'd1')", &[]));
    k.accept("refund the 5", &format!("SELECT * FROM billing.refund('{d3}')"), &[]);

    // deep overdraft: down to -i64::MAX, never below i64::MIN
    k.accept("grant 1", "SELECT billing.grant('neg', 1, 'g1')", &[]);
    k.accept("overdraft i64::MAX", "SELECT billing.set_overdraft('neg', $1)", &[&MAX]);
    k.accept("debit i64::MAX", "SELECT * FROM billing.debit('neg', $1, 'd1')", &[&MAX]);
    k.refuse("debit i64::MAX again", "SELECT * FROM billing.debit('neg', $1, 'd2')", &[&MAX], &["BL001", "22003"]);
    k.refuse("hold i64::MAX", "SELECT billing.reserve('neg', $1, 'r1')", &[&MAX], &["BL001", "22003"]);
    let bal = scalar_i64(k.c, "SELECT billing.balance('neg')");
    k.check("deep overdraft balance", bal == 1 - MAX, || format!("balance {bal}"));

    for (name, sql) in [
        ("billing.grant_status", "SELECT count(*) FROM billing.grant_status s WHERE s::text IS NOT NULL"),
        ("billing.balance_at", "SELECT count(*) FROM (SELECT billing.balance_at(c.customer, now()) FROM billing.customers c) s"),
        ("billing.verify()", "SELECT count(*) FROM billing.verify()"),
        ("journal sums", "SELECT count(*) FROM (SELECT customer, sum(amount) FROM billing.journal GROUP BY 1) s"),
    ] {
        k.accept(&format!("{name} reads near i64::MAX"), sql, &[]);
    }
    for (cust, want) in [("max", MAX), ("neg", 1 - MAX)] {
        let sum: String = k.c.query_one("SELECT sum(amount)::text FROM billing.journal WHERE customer = $1", &[&cust]).unwrap().get(0);
        k.check("journal sum", sum == want.to_string(), || format!("{cust}: journal sums to {sum}, balance {want}"));
    }
    verify_clean(k.c);
    k.finish("balances_near_i64_max_refused_not_wrapped");
}

// ---- least privilege and secrets ----

struct Role(String);

impl Role {
    fn create(tag: &str, member_of: &str) -> Role {
        let name = format!("it_{tag}_{}", std::process::id());
        let mut c = connect_config(&server_config());
        c.batch_execute(&format!("DROP ROLE IF EXISTS {name}; CREATE ROLE {name} LOGIN; GRANT {member_of} TO {name}")).unwrap();
        Role(name)
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        if let Ok(mut c) = server_config().connect(postgres::NoTls) {
            let _ = c.batch_execute(&format!("DROP ROLE IF EXISTS {}", self.0));
        }
    }
}

/// A login role granted billing_webhook can hand in deliveries (inbox INSERT, ingest) and
/// do nothing else: 42501 for every table read, every ledger or admin function, granting.
#[test]
fn webhook_role_can_only_ingest() {
    let role = Role::create("hwebhook", "billing_webhook");
    let db = TestDb::new("hostile_role");
    let mut su = db.connect();
    setup_endpoints(&mut su);
    expect_ok(&mut su, "SELECT billing.grant('cust', 1000, 'seed')");
    let entry: String = su.query_one("SELECT entry_id::text FROM billing.debit('cust', 5, 'd1')", &[]).unwrap().get(0);
    let rid: String = su.query_one("SELECT billing.reserve('cust', 5, 'r1')::text", &[]).unwrap().get(0);
    drop(su);
    let mut wh = db.connect_as(&role.0);
    let mut k = Cases::new(&mut wh, db.connect());
    let now = stripe::now_unix();

    // what it may do
    let b1 = stripe::checkout_completed("evt_r1", "cs_r1", "pi_r1", "cust", 7, now);
    let h1 = stripe::signed_headers(SECRET, &b1);
    let ep: &str = EP;
    k.accept("INSERT INTO billing.inbox", INBOX, &[&ep, &h1, &b1]);
    let b2 = stripe::checkout_completed("evt_r2", "cs_r2", "pi_r2", "cust", 3, now);
    let h2 = stripe::signed_headers(SECRET, &b2);
    let rows = k.accept("billing.ingest", INGEST, &[&ep, &h2, &b2]);
    let status: Option<String> = rows.first().map(|r| r.get(1));
    k.check("billing.ingest", status.as_deref() == Some("applied"), || format!("status {status:?}"));

    // and nothing else
    let mut denied: Vec<String> = [
        "endpoint_secrets",
        "endpoints",
        "events",
        "event_variants",
        "journal",
        "customers",
        "grants",
        "reservations",
        "purchases",
        "provider_customers",
        "subscriptions",
        "plans",
        "inbox",
        "grant_status",
        "failed_events",
        "stale_events",
    ]
    .iter()
    .map(|t| format!("SELECT * FROM billing.{t}"))
    .collect();
    denied.extend([
        "SELECT * FROM billing.debit('cust', 1, 'x')".to_string(),
        "SELECT billing.grant('cust', 1000000, 'x')".into(),
        "SELECT billing.reserve('cust', 1, 'x')".into(),
        format!("SELECT * FROM billing.settle('{rid}', 1)"),
        format!("SELECT * FROM billing.release('{rid}')"),
        format!("SELECT * FROM billing.refund('{entry}')"),
        "SELECT billing.balance('cust')".into(),
        "SELECT billing.set_overdraft('cust', 1000000)".into(),
        "SELECT billing.set_frozen('cust', false)".into(),
        "SELECT * FROM billing.verify()".into(),
        "SELECT billing.maintenance()".into(),
        format!("SELECT billing.add_secret('{EP}', 'whsec_attacker')"),
        format!("SELECT billing.remove_secret('{EP}', '{SECRET}')"),
        "SELECT billing.add_endpoint('evil', 'stripe')".into(),
        "SELECT * FROM billing.replay('evt_r1')".into(),
        "SELECT * FROM billing.replay_failed()".into(),
        "SELECT * FROM billing.link_customer('attacker', 'cus_victim')".into(),
        "SELECT billing.verify_signature('stripe', '{}', '{}', '')".into(),
        "SELECT billing.define_topup('usd:1', 1000000)".into(),
        "UPDATE billing.inbox SET body = ''".into(),
        "DELETE FROM billing.inbox".into(),
        "TRUNCATE billing.inbox".into(),
        "INSERT INTO billing.journal (customer) VALUES ('x')".into(),
        "INSERT INTO billing.endpoint_secrets (endpoint, secret) VALUES ('stripe-hostile', 'whsec_attacker')".into(),
        "INSERT INTO billing.events (provider) VALUES ('stripe')".into(),
        "CREATE TABLE billing.evil (x int)".into(),
        "CREATE FUNCTION billing.evil() RETURNS int LANGUAGE sql AS 'SELECT 1'".into(),
        "GRANT SELECT ON billing.journal TO PUBLIC".into(),
        "GRANT SELECT ON billing.endpoint_secrets TO PUBLIC".into(),
        format!("GRANT billing_admin TO {}", role.0),
        format!("GRANT billing_app TO {}", role.0),
        "SET ROLE billing_admin".into(),
        "SET ROLE billing_app".into(),
        "SET billing.webhook_tolerance = 86400".into(),
        "SET billing.webhook_max_bytes = 67108864".into(),
        "SET LOCAL billing.clock = '2030-01-01 00:00:00+00'".into(),
    ]);
    for sql in &denied {
        k.refuse(&format!("as billing_webhook: {sql}"), sql, &[], &["42501"]);
    }
    k.finish("webhook_role_can_only_ingest");
    drop(wh);
    let mut su = db.connect();
    assert_eq!(scalar_i64(&mut su, "SELECT billing.balance('cust')"), 1000 - 5 - 5 + 7 + 3, "the two deliveries granted, nothing else moved");
}

/// Secrets never appear in error messages (as the receiver sees them), in a view, or to
/// billing_admin; no role but the owner may read billing.endpoint_secrets.
#[test]
fn secrets_never_leak() {
    let webhook = Role::create("hsecwh", "billing_webhook");
    let admin = Role::create("hsecadm", "billing_admin");
    let db = TestDb::new("hostile_secret");
    let mut su = db.connect();
    setup_endpoints(&mut su);
    let second = "whsec_second_R0TATED_secret_9c2e";
    expect_ok(&mut su, &format!("SELECT billing.add_secret('{EP}', '{second}')"));
    let mut failures: Vec<String> = vec![];
    let now = stripe::now_unix();
    let body = stripe::checkout_completed("evt_s1", "cs_s1", "pi_s1", "cust", 5, now);
    let secret_bits = [SECRET, second, "h0stile_S3CRET", "R0TATED", STD_SECRET, "MDEyMzQ1Njc4OWFi"];

    let mut check_error = |who: &str, c: &mut Client, name: &str, endpoint: &str, headers: &str, body: &str, code: &str| {
        match c.query(INGEST, &[&endpoint, &headers, &body]) {
            Ok(_) => failures.push(format!("{who} {name}: succeeded, expected {code}")),
            Err(e) => {
                let d = e.as_db_error().unwrap_or_else(|| panic!("{name}: not a server error: {e}"));
                if d.code().code() != code {
                    failures.push(format!("{who} {name}: {} {}, expected {code}", d.code().code(), d.message()));
                }
                let text = format!("{} | {:?} | {:?} | {:?} | {:?}", d.message(), d.detail(), d.hint(), d.where_(), d.routine());
                for s in secret_bits {
                    if text.contains(s) {
                        failures.push(format!("{who} {name}: the error shows secret material {s:?}: {text}"));
                    }
                }
                // the expected HMAC under a configured secret is secret-derived too
                for key in [SECRET, second] {
                    let expect = stripe::sign(key, now, body.as_bytes());
                    let mac = &expect[expect.find("v1=").unwrap() + 3..];
                    if text.contains(mac) {
                        failures.push(format!("{who} {name}: the error shows the expected signature: {text}"));
                    }
                }
            }
        }
        c.query_one("SELECT 1", &[]).unwrap_or_else(|e| panic!("{name}: backend died: {e}"));
    };
    let wrong = stripe::headers(&[("Stripe-Signature", &stripe::sign("whsec_wrong", now, body.as_bytes()))]);
    let stale = stripe::headers(&[("Stripe-Signature", &stripe::sign(SECRET, now - 7200, body.as_bytes()))]);
    let junk_sig = stripe::headers(&[("Stripe-Signature", &format!("t={now},v1={}", "0".repeat(64)))]);
    let not_event = "{\"hello\": 1}";
    let h_not_event = stripe::signed_headers(SECRET, not_event);
    let h_big = stripe::signed_headers(SECRET, "x");
    let std_wrong = stripe::headers(&[
        ("webhook-id", "m1"),
        ("webhook-timestamp", &now.to_string()),
        ("webhook-signature", "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
    ]);
    let mut wh = db.connect_as(&webhook.0);
    let mut su2 = db.connect();
    for (who, c) in [("billing_webhook", &mut wh), ("superuser", &mut su2)] {
        check_error(who, c, "wrong signature", EP, &wrong, &body, "BL010");
        check_error(who, c, "zeros signature", EP, &junk_sig, &body, "BL010");
        check_error(who, c, "stale signature", EP, &stale, &body, "BL011");
        check_error(who, c, "not an event", EP, &h_not_event, not_event, "BL012");
        check_error(who, c, "standard, wrong signature", STD_EP, &std_wrong, "{}", "BL010");
        check_error(who, c, "unknown endpoint", "nope", &h_big, "x", "BL013");
    }

    // No view (or other rewrite rule) reads billing.endpoint_secrets.
    let views: Vec<String> = su
        .query(
            "SELECT DISTINCT r.ev_class::regclass::text FROM pg_rewrite r
               JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
              WHERE d.refobjid = 'billing.endpoint_secrets'::regclass AND r.ev_class <> 'billing.endpoint_secrets'::regclass",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !views.is_empty() {
        failures.push(format!("views over billing.endpoint_secrets: {views:?}"));
    }
    // Nor does any view of the schema show a secret value, read as the superuser.
    let all_views: Vec<String> = su
        .query("SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'billing' AND c.relkind IN ('v', 'm')", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for v in &all_views {
        let n: i64 = su
            .query_one(
                &format!("SELECT count(*) FROM {v} x WHERE x::text LIKE '%' || $1 || '%' OR x::text LIKE '%' || $2 || '%'"),
                &[&SECRET, &second],
            )
            .unwrap()
            .get(0);
        if n > 0 {
            failures.push(format!("view {v} shows a secret"));
        }
    }
    // Table privileges: only the owner reads secrets, no role, no column grant.
    for r in ["billing_admin", "billing_app", "billing_reader", "billing_webhook", "public"] {
        let (t, col): (bool, bool) = {
            let row = su
                .query_one(
                    "SELECT has_table_privilege($1, 'billing.endpoint_secrets', 'SELECT'), has_column_privilege($1, 'billing.endpoint_secrets', 'secret', 'SELECT')",
                    &[&r],
                )
                .unwrap();
            (row.get(0), row.get(1))
        };
        if t || col {
            failures.push(format!("{r} may read billing.endpoint_secrets"));
        }
    }
    let mut adm = db.connect_as(&admin.0);
    for sql in
        ["SELECT * FROM billing.endpoint_secrets", "SELECT secret FROM billing.endpoint_secrets", "SELECT count(*) FROM billing.endpoint_secrets"]
    {
        match adm.query(sql, &[]) {
            Ok(_) => failures.push(format!("billing_admin: {sql} succeeded")),
            Err(e) if e.code().map(|c| c.code()) == Some("42501") => {}
            Err(e) => failures.push(format!("billing_admin: {sql}: {}, expected 42501", msg(&e))),
        }
    }
    // billing_admin reads the events, whose stored headers carry signatures, never secrets.
    let n: i64 = adm
        .query_one("SELECT count(*) FROM billing.events e WHERE e::text LIKE '%' || $1 || '%' OR e::text LIKE '%' || $2 || '%'", &[&SECRET, &second])
        .unwrap()
        .get(0);
    if n > 0 {
        failures.push("billing.events shows a secret".into());
    }
    assert!(failures.is_empty(), "secrets leak:\n  {}", failures.join("\n  "));
}
