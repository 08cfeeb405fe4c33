//! Stripe deliveries as Stripe sends them, for the tests that ingest webhooks: the
//! `Stripe-Signature` header (`t=<unix>,v1=<hex HMAC-SHA256 of "t.body" keyed by the
//! secret's bytes>`), the headers object, and the events that buy credits.
#![allow(dead_code)]

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs() as i64
}

/// The `Stripe-Signature` value for `body` signed with `secret` at `t`.
pub fn sign(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// A JSON string literal (quotes, backslashes and control characters escaped).
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A headers object (as text, for `$n::text::jsonb`) from name/value pairs.
pub fn headers(pairs: &[(&str, &str)]) -> String {
    let fields: Vec<String> = pairs.iter().map(|(k, v)| format!("{}:{}", json_str(k), json_str(v))).collect();
    format!("{{{}}}", fields.join(","))
}

/// The headers of a delivery of `body` signed now with `secret`.
pub fn signed_headers(secret: &str, body: &str) -> String {
    headers(&[("Content-Type", "application/json"), ("Stripe-Signature", &sign(secret, now_unix(), body.as_bytes()))])
}

/// `checkout.session.completed` of a paid session buying `credits` for `customer`
/// (`metadata.customer`), paid by PaymentIntent `pi`.
pub fn checkout_completed(event_id: &str, session: &str, pi: &str, customer: &str, credits: i64, created: i64) -> String {
    format!(
        r#"{{"id":"{event_id}","object":"event","api_version":"2024-06-20","type":"checkout.session.completed","created":{created},"livemode":false,"data":{{"object":{{"id":"{session}","object":"checkout.session","mode":"payment","payment_status":"paid","status":"complete","payment_intent":"{pi}","amount_total":{amount},"currency":"usd","metadata":{{"customer":"{customer}","credits":"{credits}"}}}}}}}}"#,
        amount = credits * 10
    )
}

/// `payment_intent.succeeded` of the same purchase (one grant, whichever event comes first).
pub fn payment_intent_succeeded(event_id: &str, pi: &str, customer: &str, credits: i64, created: i64) -> String {
    format!(
        r#"{{"id":"{event_id}","object":"event","api_version":"2024-06-20","type":"payment_intent.succeeded","created":{created},"livemode":false,"data":{{"object":{{"id":"{pi}","object":"payment_intent","status":"succeeded","amount":{amount},"amount_received":{amount},"currency":"usd","metadata":{{"customer":"{customer}","credits":"{credits}"}}}}}}}}"#,
        amount = credits * 10
    )
}
