//! Standard Webhooks (`webhook-*` / `svix-*`) parsing and verification on arbitrary
//! input: never panics, never verifies headers the fuzzer made up, and a genuine
//! signature verifies only with its own key.
#![no_main]
use arbitrary::Arbitrary;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../../src/webhook/signature.rs"]
mod signature;
use signature::{Provider, SigError};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    id: &'a str,
    timestamp: &'a str,
    signature: &'a str,
    svix: bool,
    body: &'a [u8],
    secrets: Vec<&'a str>,
    now: i64,
    key: &'a [u8],
    other_key: &'a [u8],
    t: u32,
}

/// Whether two keys are one HMAC-SHA256 key (equal up to trailing zero bytes, both within
/// the 64-byte block; longer keys are hashed first, a collision no fuzzer finds).
fn same_hmac_key(a: &[u8], b: &[u8]) -> bool {
    let trim = |k: &[u8]| k.len() - k.iter().rev().take_while(|&&x| x == 0).count();
    a.len() <= 64 && b.len() <= 64 && a[..trim(a)] == b[..trim(b)] || a == b
}

fuzz_target!(|i: Input| {
    let prefix = if i.svix { "svix-" } else { "webhook-" };
    let pairs = [
        (format!("{prefix}id"), i.id.to_string()),
        (format!("{prefix}timestamp"), i.timestamp.to_string()),
        (format!("{prefix}signature"), i.signature.to_string()),
    ];
    let h = move |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let r = signature::verify(Provider::Standard, &i.secrets, &h, i.body, i.now, 300, 1 << 20);
    assert!(r.is_err(), "made-up headers verified: {:?} {:?}", (i.id, i.timestamp, i.signature), r);

    // Round trip with a key of the fuzzer's choice.
    let id = i.id.trim();
    // Keys of zero bytes only sign as the empty key and are never used: skip them.
    if i.key.iter().any(|&b| b != 0) && !id.is_empty() && !id.contains('.') && !same_hmac_key(i.key, i.other_key) {
        let enc = base64::engine::general_purpose::STANDARD;
        let secret = format!("whsec_{}", enc.encode(i.key));
        let t = i64::from(i.t);
        let sig = signature::sign_standard(&secret, id, t, i.body).expect("a valid key signs");
        let pairs = [
            ("webhook-id".to_string(), id.to_string()),
            ("webhook-timestamp".to_string(), t.to_string()),
            ("webhook-signature".to_string(), sig),
        ];
        let hs = move |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        assert!(signature::verify(Provider::Standard, &[&secret], &hs, i.body, t, 0, usize::MAX).is_ok());
        if !i.other_key.is_empty() {
            let wrong = format!("whsec_{}", enc.encode(i.other_key));
            assert_eq!(signature::verify(Provider::Standard, &[&wrong], &hs, i.body, t, 0, usize::MAX), Err(SigError::NoMatch));
        }
    }
});
