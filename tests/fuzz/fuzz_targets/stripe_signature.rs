//! `Stripe-Signature` parsing and verification on arbitrary input: never panics, never
//! verifies a header the fuzzer made up, and a genuine signature verifies only with its
//! own secret.
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../../src/webhook/signature.rs"]
mod signature;
use signature::{Provider, SigError};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    header: &'a str,
    body: &'a [u8],
    secrets: Vec<&'a str>,
    now: i64,
    tolerance: i64,
    max_bytes: u16,
    secret: &'a str,
    t: u32,
}

/// Whether two keys are one HMAC-SHA256 key (equal up to trailing zero bytes, both within
/// the 64-byte block; longer keys are hashed first, a collision no fuzzer finds).
fn same_hmac_key(a: &[u8], b: &[u8]) -> bool {
    let trim = |k: &[u8]| k.len() - k.iter().rev().take_while(|&&x| x == 0).count();
    a.len() <= 64 && b.len() <= 64 && a[..trim(a)] == b[..trim(b)] || a == b
}

fuzz_target!(|i: Input| {
    let header = i.header.to_string();
    let h = move |name: &str| (name == "stripe-signature").then(|| header.clone());
    let r = signature::verify(Provider::Stripe, &i.secrets, &h, i.body, i.now, i.tolerance, i.max_bytes as usize);
    assert!(r.is_err(), "a made-up header verified: {:?} {:?}", i.header, r);
    if let Err(e) = &r {
        let _ = (e.to_string(), e.code());
    }

    // Round trip with a secret of the fuzzer's choice (one the verifier uses: not blank).
    if signature::check_secret(Provider::Stripe, i.secret).is_ok() {
        let t = i64::from(i.t);
        let sig = signature::sign_stripe(i.secret, t, i.body);
        let hs = |name: &str| (name == "stripe-signature").then(|| sig.clone());
        let ok = signature::verify(Provider::Stripe, &[i.secret], &hs, i.body, t, 0, usize::MAX);
        assert_eq!(ok.map(|v| v.timestamp), Ok(t));
        // HMAC pads keys with zero bytes to its block size, so "k" and "k\0" are the same
        // key: only secrets that differ as HMAC keys must fail.
        let others: Vec<&str> = i.secrets.iter().copied().filter(|s| !same_hmac_key(s.as_bytes(), i.secret.as_bytes())).collect();
        let wrong = signature::verify(Provider::Stripe, &others, &hs, i.body, t, 0, usize::MAX);
        assert_eq!(wrong, Err(SigError::NoMatch));
    }
});
