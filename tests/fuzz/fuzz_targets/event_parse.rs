//! The Stripe event parser and every accessor over what it returns, on arbitrary bytes:
//! never panics, nesting stays bounded (no stack overflow), and whatever parses is a
//! well-formed event.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../../src/webhook/event.rs"]
mod event;

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
}

fuzz_target!(|data: &[u8]| {
    // Postgres hands over text only, so invalid UTF-8 never reaches the parser; the lossy
    // form still exercises it with the rest of the bytes.
    let text = String::from_utf8_lossy(data);
    if let Ok(e) = event::parse(&text) {
        assert!(!e.id.is_empty() && e.id.len() <= 255);
        assert!(!e.kind.is_empty() && e.kind.len() <= 255);
        if let Some(o) = &e.object {
            read_everything(o);
        }
    }
    if data.len() >= 24 {
        let n = |i: usize| i64::from_le_bytes(data[i..i + 8].try_into().unwrap());
        let credits = n(0).checked_abs().unwrap_or(i64::MAX);
        let r = event::revoked_for(credits, n(8), n(16));
        assert!((0..=credits).contains(&r));
    }
});
