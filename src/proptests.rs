//! Property tests (proptest, stable Rust) of the pure code: the webhook signature parsers,
//! the Stripe event parser and the ledger rules. Hostile input never panics, never
//! verifies without the secret, and the ledger's arithmetic keeps its invariants on random
//! books. Case counts are modest so the module runs in seconds; `PROPTEST_CASES=5000`
//! (proptest's own variable) runs more.
//!
//! Failures are not persisted to `proptest-regressions/` (the checkout may be read-only);
//! proptest prints the minimal failing input, which belongs in a plain `#[test]`.
use crate::ledger::rules::{merge, refund_plan, settle_plan, Acct, Book, Grant, Hold, Id, Insufficient, Kind, Ts, NEVER};
use crate::webhook::event;
use crate::webhook::signature::{self, Provider, SigError, MAX_SIGNATURES};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use proptest::prelude::*;
use proptest::test_runner::Config;
use std::collections::HashMap;

const MAX: usize = 1 << 20;

fn config(cases: u32) -> Config {
    Config { cases, failure_persistence: None, ..Config::default() }
}

/// Case-insensitive header lookup over pairs, as the caller in `ingest.rs` does it.
fn lookup(pairs: Vec<(String, String)>) -> impl Fn(&str) -> Option<String> {
    move |name: &str| pairs.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone())
}

fn stripe_verify(secrets: &[&str], header: &str, body: &[u8], now: i64, tol: i64) -> Result<signature::Verified, SigError> {
    let h = lookup(vec![("Stripe-Signature".into(), header.into())]);
    signature::verify(Provider::Stripe, secrets, &h, body, now, tol, MAX)
}

fn standard_verify(secrets: &[&str], id: &str, ts: &str, sig: &str, body: &[u8], now: i64) -> Result<signature::Verified, SigError> {
    let h = lookup(vec![("webhook-id".into(), id.into()), ("webhook-timestamp".into(), ts.into()), ("webhook-signature".into(), sig.into())]);
    signature::verify(Provider::Standard, secrets, &h, body, now, 300, MAX)
}

/// Pieces a hostile `Stripe-Signature` header is made of: well-formed-looking elements
/// with random values, and junk.
fn stripe_element() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{0,20}".prop_map(|t| format!("t={t}")),
        "[0-9a-f]{64}".prop_map(|h| format!("v1={h}")),
        "[0-9a-fA-F]{0,70}".prop_map(|h| format!("v1={h}")),
        "[0-9a-f]{64}".prop_map(|h| format!("v0={h}")),
        "[ =,a-z0-9]{0,12}",
        any::<String>(),
        Just(String::new()),
    ]
}

fn stripe_header() -> impl Strategy<Value = String> {
    (prop::collection::vec(stripe_element(), 0..12), prop::sample::select(vec![",", ", ", " ,", ",,"])).prop_map(|(parts, sep)| parts.join(sep))
}

fn standard_sig_header() -> impl Strategy<Value = String> {
    let entry = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..48).prop_map(|b| format!("v1,{}", STANDARD.encode(b))),
        "[A-Za-z0-9+/=]{0,60}".prop_map(|s| format!("v1,{s}")),
        "[A-Za-z0-9+/=]{0,60}".prop_map(|s| format!("v1a,{s}")),
        any::<String>(),
    ];
    prop::collection::vec(entry, 0..8).prop_map(|v| v.join(" "))
}

/// Whether two keys are one HMAC-SHA256 key: HMAC pads keys with zero bytes to its 64-byte
/// block, so `k` and `k\0` sign alike (longer keys are hashed first).
fn same_hmac_key(a: &[u8], b: &[u8]) -> bool {
    let trim = |k: &[u8]| k.len() - k.iter().rev().take_while(|&&x| x == 0).count();
    a.len() <= 64 && b.len() <= 64 && a[..trim(a)] == b[..trim(b)] || a == b
}

// ---- signatures ----------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(256))]

    /// Arbitrary header strings and bodies never panic, and never verify: a random header
    /// cannot carry the HMAC of a secret it does not know.
    #[test]
    fn stripe_hostile_headers_never_verify(header in prop_oneof![stripe_header(), any::<String>()],
                                           body in prop::collection::vec(any::<u8>(), 0..256),
                                           secrets in prop::collection::vec(any::<String>(), 0..3),
                                           now in any::<i64>(), tol in any::<i64>()) {
        let s: Vec<&str> = secrets.iter().map(String::as_str).collect();
        prop_assert!(stripe_verify(&s, &header, &body, now, tol).is_err());
    }

    #[test]
    fn standard_hostile_headers_never_verify(id in prop_oneof!["[a-z_0-9]{0,20}", any::<String>()],
                                             ts in prop_oneof!["[0-9]{0,20}", any::<String>()],
                                             sig in standard_sig_header(),
                                             body in prop::collection::vec(any::<u8>(), 0..256),
                                             secrets in prop::collection::vec(prop_oneof![
                                                 prop::collection::vec(any::<u8>(), 1..40).prop_map(|k| format!("whsec_{}", STANDARD.encode(k))),
                                                 any::<String>()], 0..3),
                                             now in any::<i64>()) {
        let s: Vec<&str> = secrets.iter().map(String::as_str).collect();
        prop_assert!(standard_verify(&s, &id, &ts, &sig, &body, now).is_err());
    }

    /// Sign -> verify round trip; a signature made with another secret, or over other
    /// bytes, or at another time, never verifies.
    #[test]
    fn stripe_round_trip_and_only_with_the_secret(secret in "[ -~]{1,40}", other in "[ -~]{1,40}",
                                                  t in 0i64..=999_999_999_999_999_999,
                                                  body in prop::collection::vec(any::<u8>(), 0..512),
                                                  flip in any::<prop::sample::Index>()) {
        prop_assume!(secret != other);
        // Blank secrets (all spaces) never verify: blank_stripe_secrets_are_refused_and_never_verify.
        prop_assume!(signature::check_secret(Provider::Stripe, &secret).is_ok());
        let sig = signature::sign_stripe(&secret, t, &body);
        prop_assert_eq!(stripe_verify(&[secret.as_str()], &sig, &body, t, 0).map(|v| v.timestamp), Ok(t));
        // rotation: any configured secret verifies
        prop_assert!(stripe_verify(&[other.as_str(), secret.as_str()], &sig, &body, t, 0).is_ok());
        // never without the secret
        prop_assert_eq!(stripe_verify(&[other.as_str()], &sig, &body, t, 0), Err(SigError::NoMatch));
        prop_assert_eq!(stripe_verify(&[], &sig, &body, t, 0), Err(SigError::NoMatch));
        let forged = signature::sign_stripe(&other, t, &body);
        prop_assert_eq!(stripe_verify(&[secret.as_str()], &forged, &body, t, 0), Err(SigError::NoMatch));
        // other bytes
        let mut tampered = body.clone();
        if tampered.is_empty() { tampered.push(b'x') } else { let i = flip.index(tampered.len()); tampered[i] ^= 1; }
        prop_assert_eq!(stripe_verify(&[secret.as_str()], &sig, &tampered, t, 0), Err(SigError::NoMatch));
        // another timestamp in the header (inside the tolerance): no match
        let moved = sig.replacen(&format!("t={t},"), &format!("t={},", t ^ 1), 1);
        prop_assert_eq!(stripe_verify(&[secret.as_str()], &moved, &body, t, 10), Err(SigError::NoMatch));
    }

    #[test]
    fn standard_round_trip_and_only_with_the_secret(key in prop::collection::vec(any::<u8>(), 1..64),
                                                    other in prop::collection::vec(any::<u8>(), 1..64),
                                                    id in "[a-zA-Z0-9_-]{1,32}",
                                                    t in 0i64..=999_999_999_999_999_999,
                                                    body in prop::collection::vec(any::<u8>(), 0..512)) {
        prop_assume!(!same_hmac_key(&key, &other));
        let secret = format!("whsec_{}", STANDARD.encode(&key));
        let wrong = format!("whsec_{}", STANDARD.encode(&other));
        // Zero-byte keys never verify: undecodable_standard_secrets_are_refused_and_never_verify.
        prop_assume!(signature::check_secret(Provider::Standard, &secret).is_ok());
        let sig = signature::sign_standard(&secret, &id, t, &body).expect("a valid secret signs");
        let ts = t.to_string();
        let h = |id: &str| lookup(vec![("webhook-id".into(), id.into()), ("webhook-timestamp".into(), ts.clone()), ("webhook-signature".into(), sig.clone())]);
        let ok = signature::verify(Provider::Standard, &[&secret], &h(&id), &body, t, 0, MAX);
        prop_assert_eq!(ok, Ok(signature::Verified { timestamp: t, webhook_id: Some(id.clone()) }));
        prop_assert_eq!(signature::verify(Provider::Standard, &[&wrong], &h(&id), &body, t, 0, MAX), Err(SigError::NoMatch));
        let other_id = format!("{id}x");
        prop_assert_eq!(signature::verify(Provider::Standard, &[&secret], &h(&other_id), &body, t, 0, MAX), Err(SigError::NoMatch));
    }

    /// The tolerance is symmetric and exact, and never overflows.
    #[test]
    fn tolerance_is_exact(t in 0i64..=999_999_999_999_999_999, now in any::<i64>(), tol in any::<i64>()) {
        let sig = signature::sign_stripe("whsec_x", t, b"{}");
        let r = stripe_verify(&["whsec_x"], &sig, b"{}", now, tol);
        let inside = (i128::from(now) - i128::from(t)).abs() <= i128::from(tol);
        prop_assert_eq!(r.is_ok(), inside, "{:?}", r);
        if !inside {
            let clock_error = matches!(r, Err(SigError::TooOld { .. }) | Err(SigError::TooNew { .. }));
            prop_assert!(clock_error, "{:?}", r);
        }
    }

    /// Over the limit is refused before anything is read, whatever the headers say.
    #[test]
    fn oversized_bodies_refused_first(len in 0usize..4096, max in 0usize..4096, header in stripe_header()) {
        let body = vec![b'a'; len];
        for p in [Provider::Stripe, Provider::Standard] {
            let h = |_: &str| -> Option<String> { Some(header.clone()) };
            let r = signature::verify(p, &["whsec_x"], &h, &body, 0, 300, max);
            if len > max {
                prop_assert_eq!(r, Err(SigError::TooLarge { len, max }));
            } else {
                let too_large = matches!(r, Err(SigError::TooLarge { .. }));
                prop_assert!(!too_large);
            }
        }
    }

    /// Work per header is bounded: only the first MAX_SIGNATURES v1 entries are
    /// considered, so a genuine signature after that many decoys is not even looked at.
    #[test]
    fn signatures_considered_are_capped(decoys in 0usize..(2 * MAX_SIGNATURES), body in prop::collection::vec(any::<u8>(), 0..64)) {
        let t = 1_700_000_000;
        let real = signature::sign_stripe("whsec_cap", t, &body);
        let real_v1 = real.split_once(",v1=").map(|x| x.1).unwrap().to_string();
        let mut header = format!("t={t}");
        for i in 0..decoys {
            header.push_str(&format!(",v1={:064x}", i + 1));
        }
        header.push_str(&format!(",v1={real_v1}"));
        let r = stripe_verify(&["whsec_cap"], &header, &body, t, 0);
        prop_assert_eq!(r.is_ok(), decoys < MAX_SIGNATURES, "{} decoys: {:?}", decoys, r);
    }
}

// ---- the event parser ----------------------------------------------------------------------

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        prop_oneof!["[a-z_]{0,12}", any::<String>()].prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        let key = prop_oneof![
            prop::sample::select(vec![
                "id",
                "type",
                "created",
                "data",
                "object",
                "metadata",
                "credits",
                "customer",
                "items",
                "lines",
                "price",
                "status",
                "payment_intent",
                "amount",
                "amount_refunded",
                "amount_received",
                "current_period_end",
                "period",
                "end",
                "parent",
                "subscription_details",
                "subscription",
                "client_reference_id",
                "charge",
                "payment_status",
                "mode",
                "currency",
                "amount_total",
                "trial_end",
                "plan",
                "pricing",
                "price_details",
            ])
            .prop_map(str::to_string),
            "[a-z]{1,6}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key, inner, 0..8).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Runs every accessor over an object: none may panic on any shape.
fn read_everything(o: &serde_json::Value) {
    let _ = event::subscription(o);
    let _ = event::invoice(o);
    let _ = event::checkout_session(o);
    let _ = event::payment_intent(o);
    let _ = event::charge_refund(o);
    let _ = event::refund(o);
    let _ = event::dispute(o);
    let _ = event::metadata_credits(o);
    let _ = event::customer_ref(o);
    let _ = event::id_of(o, "customer");
}

proptest! {
    #![proptest_config(config(256))]

    /// Arbitrary bytes (as the lossy text Postgres would at best hand over) never panic.
    #[test]
    fn event_parse_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(e) = event::parse(&text) {
            prop_assert!(!e.id.is_empty() && e.id.len() <= 255);
        }
    }

    #[test]
    fn event_parse_arbitrary_strings(s in any::<String>()) {
        let _ = event::parse(&s);
    }

    /// Structured random JSON: whatever parses is a well-formed event, and every accessor
    /// reads any shape without panicking.
    #[test]
    fn event_parse_random_json(v in json_value(), id in prop_oneof![Just(None), any::<String>().prop_map(Some)],
                               kind in prop_oneof![Just(None), "[a-z._]{0,30}".prop_map(Some)],
                               created in prop_oneof![Just(None), any::<i64>().prop_map(Some)]) {
        let mut top = serde_json::Map::new();
        if let Some(id) = &id { top.insert("id".into(), id.clone().into()); }
        if let Some(k) = &kind { top.insert("type".into(), k.clone().into()); }
        if let Some(c) = created { top.insert("created".into(), c.into()); }
        top.insert("data".into(), serde_json::json!({ "object": v.clone() }));
        let body = serde_json::Value::Object(top).to_string();
        match event::parse(&body) {
            Ok(e) => {
                prop_assert_eq!(Some(&e.id), id.as_ref());
                prop_assert!(!e.id.is_empty() && e.id.len() <= 255);
                prop_assert!(!e.kind.is_empty() && e.kind.len() <= 255);
                prop_assert_eq!(Some(e.created), created);
                if let Some(o) = &e.object { read_everything(o); }
            }
            Err(m) => prop_assert!(!m.is_empty()),
        }
        read_everything(&v);
        let _ = event::parse(&v.to_string());
    }

    /// Nesting is bounded: deep documents are refused (serde_json's limit of 128), never
    /// a stack overflow, whatever mix of arrays and objects.
    #[test]
    fn event_parse_nesting_is_bounded(shape in prop::collection::vec(any::<bool>(), 1..4000)) {
        let depth = shape.len();
        let mut open = String::new();
        let mut close = String::new();
        for &obj in &shape {
            if obj { open.push_str("{\"a\":"); } else { open.push('['); }
        }
        for &obj in shape.iter().rev() {
            close.push(if obj { '}' } else { ']' });
        }
        let body = format!(r#"{{"id":"evt_1","type":"t","created":1,"data":{{"object":{{"x":{open}1{close}}}}}}}"#);
        let r = event::parse(&body);
        if depth <= 100 {
            prop_assert!(r.is_ok(), "depth {}: {:?}", depth, r);
        }
        if depth >= 130 {
            prop_assert!(r.is_err(), "depth {} parsed", depth);
        }
    }

    /// Revocation arithmetic: never more than the credits, never negative, never panics.
    #[test]
    fn revoked_for_is_bounded(credits in 0i64..=i64::MAX, amount in any::<i64>(), refunded in any::<i64>()) {
        let r = event::revoked_for(credits, amount, refunded);
        prop_assert!((0..=credits).contains(&r), "{}", r);
        if amount > 0 && refunded >= amount { prop_assert_eq!(r, credits); }
    }
}

// ---- ledger rules ----------------------------------------------------------------------------

fn id(n: usize) -> Id {
    let mut b = [0u8; 16];
    b[14] = (n >> 8) as u8;
    b[15] = n as u8;
    b
}

/// A random book as of `clock`: grants (some never expiring), holds that took credits out
/// of some grants and may have borrowed, an overdraft account and limit. The cached
/// balance is the sum of all accounts, as the store keeps it.
#[derive(Debug, Clone)]
struct Scenario {
    book: Book,
    clock: Ts,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    let grant = (0i64..1000, prop_oneof![Just(None), (1i64..2000).prop_map(Some)], -3i32..4);
    let hold = (prop::collection::vec((0usize..8, 1i64..300), 0..3), 0i64..200, 1i64..2000);
    (prop::collection::vec(grant, 0..8), prop::collection::vec(hold, 0..4), -400i64..200, 0i64..500, 0i64..1000).prop_map(
        |(grants, holds, od, limit, clock)| {
            let mut book = Book { od, overdraft_limit: limit, ..Default::default() };
            for (i, (remaining, exp, priority)) in grants.into_iter().enumerate() {
                // live at the clock: expiries lie after it
                let expires_at = exp.map_or(NEVER, |e| clock + e);
                book.grants.push(Grant { id: id(i), remaining, expires_at, priority, seq: i as i64 });
            }
            book.sort();
            let n = book.grants.len();
            for (j, (takes, borrow, ttl)) in holds.into_iter().enumerate() {
                let hid = id(100 + j);
                let mut lines: Vec<(Acct, i64)> = vec![];
                if n > 0 {
                    for (gi, x) in takes {
                        lines.push((Acct::Grant(book.grants[gi % n].id), x));
                    }
                }
                if borrow > 0 {
                    lines.push((Acct::Borrow(hid), borrow));
                }
                let lines = merge(lines);
                if lines.is_empty() {
                    continue;
                }
                book.holds.push(Hold { id: hid, lines, expires_at: clock + ttl });
            }
            book.balance = accounts_sum(&book);
            Scenario { book, clock }
        },
    )
}

/// The balance from its parts: grants' remaining credits, the overdraft account, less what
/// active holds borrowed (what they took from grants is already out of `remaining`).
fn accounts_sum(b: &Book) -> i64 {
    b.grants.iter().map(|g| g.remaining).sum::<i64>() + b.od - b.holds.iter().map(Hold::borrowed).sum::<i64>()
}

proptest! {
    #![proptest_config(config(512))]

    /// catch_up keeps balance == sum of the accounts, writes entries in time order never
    /// before the clock, leaves nothing expired behind, and is idempotent.
    #[test]
    fn catch_up_keeps_the_books(s in scenario(), dt in -500i64..3000) {
        let Scenario { mut book, clock } = s;
        let before = book.balance;
        let now = clock + dt;
        let entries = book.catch_up(now, clock);
        prop_assert_eq!(book.balance, accounts_sum(&book));
        prop_assert_eq!(book.balance - before, entries.iter().map(|e| e.amount()).sum::<i64>());
        let mut last = clock;
        for e in &entries {
            prop_assert!(e.at >= last, "entry at {} before {}", e.at, last);
            prop_assert!(e.at <= now.max(clock));
            prop_assert!(matches!(e.kind, Kind::Expiry | Kind::Release));
            last = e.at;
        }
        prop_assert!(book.grants.iter().all(|g| g.remaining >= 0));
        prop_assert!(book.grants.iter().all(|g| g.remaining == 0 || g.expires_at > now));
        prop_assert!(book.holds.iter().all(|h| h.expires_at > now));
        prop_assert!(book.catch_up(now, last).is_empty(), "a second catch_up found more");
        prop_assert!(book.next_event() > now);
    }

    /// allocate never takes more than is available: only live grants, each at most its
    /// remaining credits, in consumption order, the rest within the overdraft limit; the
    /// lines sum to the amount. Refused exactly when the amount exceeds balance + limit.
    #[test]
    fn allocate_never_takes_more_than_available(s in scenario(), dt in 0i64..3000, amount in 1i64..3000) {
        let Scenario { mut book, clock } = s;
        let now = clock + dt;
        book.catch_up(now, clock);
        let available = book.balance + book.overdraft_limit;
        match book.allocate(amount, now, Acct::Debt) {
            Err(Insufficient { requested, available: a }) => {
                prop_assert!(amount > available);
                prop_assert_eq!(requested, amount);
                prop_assert_eq!(a, available.max(0));
            }
            Ok(lines) => {
                prop_assert!(amount <= available);
                prop_assert_eq!(lines.iter().map(|l| l.1).sum::<i64>(), amount);
                prop_assert!(lines.iter().all(|l| l.1 > 0));
                let grants: HashMap<Id, &Grant> = book.grants.iter().map(|g| (g.id, g)).collect();
                let mut keys = vec![];
                let mut debt = 0;
                for (i, (a, x)) in lines.iter().enumerate() {
                    match a {
                        Acct::Grant(gid) => {
                            let g = grants[gid];
                            prop_assert!(g.live(now) && *x <= g.remaining);
                            // every grant before the last one drawn is drawn whole
                            if i + 1 < lines.len() { prop_assert_eq!(*x, g.remaining); }
                            keys.push(g.order_key());
                        }
                        Acct::Debt => { prop_assert_eq!(i, lines.len() - 1); debt = *x; }
                        Acct::Borrow(_) => prop_assert!(false, "borrowed for a debit"),
                    }
                }
                prop_assert!(keys.windows(2).all(|w| w[0] < w[1]), "not in consumption order");
                if debt > 0 {
                    let live: i64 = book.grants.iter().filter(|g| g.live(now)).map(|g| g.remaining).sum();
                    prop_assert_eq!(amount - debt, live, "went into overdraft before the grants ran out");
                }
                // the overdraft limit holds after the debit
                let before = book.balance;
                book.apply(&lines.iter().map(|&(a, x)| (a, -x)).collect::<Vec<_>>());
                prop_assert_eq!(book.balance, before - amount);
                prop_assert!(book.balance >= -book.overdraft_limit);
                prop_assert!(book.grants.iter().all(|g| g.remaining >= 0));
                prop_assert_eq!(book.balance, accounts_sum(&book));
            }
        }
    }

    /// A settle splits the hold exactly: consumed + returned = the hold, consumed + extra
    /// = actual, extra only beyond the hold.
    #[test]
    fn settle_plan_splits_exactly(lines in prop::collection::vec((0usize..5, 1i64..500), 1..6), actual in 0i64..3000) {
        let hid = id(99);
        let lines: Vec<(Acct, i64)> = lines.into_iter().map(|(i, x)| (if i == 4 { Acct::Borrow(hid) } else { Acct::Grant(id(i)) }, x)).collect();
        let hold = Hold { id: hid, lines: lines.clone(), expires_at: NEVER };
        let p = settle_plan(&hold, actual);
        let consumed: i64 = p.consumed.iter().map(|l| l.1).sum();
        let returned: i64 = p.returned.iter().map(|l| l.1).sum();
        prop_assert_eq!(consumed + returned, hold.amount());
        prop_assert_eq!(consumed + p.extra, actual);
        prop_assert_eq!(p.extra, (actual - hold.amount()).max(0));
        prop_assert!(p.consumed.iter().chain(&p.returned).all(|l| l.1 > 0));
        let mut per: HashMap<Acct, i64> = HashMap::new();
        for (a, x) in p.consumed.iter().chain(&p.returned) { *per.entry(*a).or_default() += x; }
        for (a, x) in merge(lines) { prop_assert_eq!(per.get(&a).copied().unwrap_or(0), x); }
    }

    /// refund_plan never refunds more than was consumed, per account and in total, over
    /// any sequence of partial and full refunds; what it refuses is exactly what exceeds
    /// the rest, and once everything is back, nothing more is refundable.
    #[test]
    fn refund_plan_never_refunds_more_than_consumed(consumed in prop::collection::vec((0usize..4, 1i64..500), 1..6),
                                                    asks in prop::collection::vec(prop_oneof![Just(None), (-5i64..700).prop_map(Some)], 1..8)) {
        let consumed: Vec<(Acct, i64)> = consumed.into_iter().map(|(i, x)| (if i == 3 { Acct::Debt } else { Acct::Grant(id(i)) }, x)).collect();
        let total: i64 = consumed.iter().map(|l| l.1).sum();
        let mut per_consumed: HashMap<Acct, i64> = HashMap::new();
        for (a, x) in &consumed { *per_consumed.entry(*a).or_default() += x; }
        let mut refunded: Vec<(Acct, i64)> = vec![];
        for ask in asks {
            let done: i64 = refunded.iter().map(|l| l.1).sum();
            let left = total - done;
            match refund_plan(&consumed, &refunded, ask) {
                Ok(plan) => {
                    let want = ask.unwrap_or(left);
                    prop_assert!(want > 0 && want <= left);
                    prop_assert_eq!(plan.iter().map(|l| l.1).sum::<i64>(), want);
                    prop_assert!(plan.iter().all(|l| l.1 > 0));
                    refunded.extend(plan);
                }
                Err(rest) => {
                    prop_assert_eq!(rest, left);
                    prop_assert!(ask.map_or(left == 0, |a| a <= 0 || a > left));
                }
            }
            let mut per: HashMap<Acct, i64> = HashMap::new();
            for (a, x) in &refunded { *per.entry(*a).or_default() += x; }
            for (a, x) in per { prop_assert!(x <= per_consumed[&a], "{:?}: refunded {} of {}", a, x, per_consumed[&a]); }
        }
        let done: i64 = refunded.iter().map(|l| l.1).sum();
        prop_assert!(done <= total);
        if done < total {
            prop_assert!(refund_plan(&consumed, &refunded, None).is_ok());
        }
        let mut all = refunded.clone();
        if let Ok(rest) = refund_plan(&consumed, &refunded, None) { all.extend(rest); }
        prop_assert_eq!(refund_plan(&consumed, &all, None), Err(0));
    }

    /// A grant repays debt first and never more than the debt or the grant.
    #[test]
    fn grant_repays_debt_within_bounds(od in -1000i64..1000, amount in 1i64..2000) {
        let b = Book { od, balance: od, ..Default::default() };
        let lines = b.grant_lines(id(1), amount);
        prop_assert_eq!(lines.iter().map(|l| l.1).sum::<i64>(), amount);
        let repay = lines.iter().filter(|l| l.0 == Acct::Debt).map(|l| l.1).sum::<i64>();
        prop_assert_eq!(repay, amount.min((-od).max(0)));
        prop_assert!(lines.iter().all(|l| l.1 >= 0));
    }
}

// ---- the access answer kept on the customer's row ------------------------------------------

/// Instants on a small grid around a few anchors, so random subscriptions and `now`s meet
/// at the boundaries (equal instants, one microsecond apart), plus the extremes.
fn instant() -> impl Strategy<Value = i64> {
    const DAY: i64 = 86_400_000_000;
    prop_oneof![
        4 => (0i64..40, -2i64..=2).prop_map(|(d, e)| d * DAY + e),
        1 => Just(i64::MAX),
        1 => Just(i64::MIN),
        1 => Just(9_223_371_331_199_999_999i64), // the last valid timestamptz
    ]
}

fn kept_sub() -> impl Strategy<Value = crate::access::decide::Sub> {
    const DAY: i64 = 86_400_000_000;
    let status = prop::sample::select(vec!["active", "trialing", "past_due", "unpaid", "canceled", "incomplete_expired", "incomplete", "paused"]);
    let grace = prop_oneof![Just(0i64), Just(3 * DAY), (0i64..10 * DAY), (-DAY..0), Just(i64::MAX)];
    (status, grace, prop::option::of(instant()), prop::option::of(instant()), any::<bool>(), prop::option::of(instant()), any::<bool>()).prop_map(
        |(status, grace_us, period_end, paid_through, cancel_at_period_end, trial_end, feature)| crate::access::decide::Sub {
            status: status.into(),
            plan: Some("pro".into()),
            features: if feature { vec!["chat".into()] } else { vec![] },
            grace_us,
            period_end,
            paid_through,
            cancel_at_period_end,
            trial_end,
        },
    )
}

proptest! {
    #![proptest_config(config(4096))]

    /// The kept answer (`kept`, `kept_allowed`) allows exactly when `decide` does, for every
    /// subscription (or none), credits, freeze, feature and instant in timestamptz's range.
    #[test]
    fn kept_answer_is_decide(sub in prop::option::of(kept_sub()), balance in -2i64..3, frozen in any::<bool>(),
                             feature in prop::option::of(prop::sample::select(vec!["chat", "video"])),
                             now in prop_oneof![instant(), -211_813_488_000_000_000i64..9_223_371_331_200_000_000]) {
        use crate::access::decide::{decide, kept, kept_allowed, Customer};
        prop_assume!((-211_813_488_000_000_000..9_223_371_331_200_000_000).contains(&now));
        let c = Customer { known: true, frozen, balance, ever_granted: true, sub: sub.clone() };
        let k = kept(sub.as_ref());
        prop_assert!(k.allowed_until <= k.counts_until);
        let feature_ok = feature.is_none_or(|f| sub.as_ref().is_some_and(|s| s.features.iter().any(|x| x == f)));
        prop_assert_eq!(kept_allowed(true, frozen, k, feature_ok, balance, now), decide(&c, feature, now).allowed(), "{:?} at {}", k, now);
        prop_assert!(!kept_allowed(false, frozen, k, feature_ok, balance, now));
    }
}
