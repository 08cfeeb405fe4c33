//! Webhook signature verification for Stripe (`Stripe-Signature`) and Standard Webhooks
//! (`webhook-*` / `svix-*` headers).
//!
//! Pure logic: no pgrx, no SPI, no I/O, no clock. The caller supplies the header lookup, the
//! raw body, the current time and the limits, so every path is unit-testable and fuzzable.
//!
//! # Order of checks
//! 1. **Body size**, before any header is read or any byte hashed, so an oversized body costs
//!    nothing.
//! 2. **Header parsing** (missing / malformed headers).
//! 3. **Signature**: every configured secret against every accepted `v1` signature, compared
//!    in constant time. Any match wins (secret rotation and Stripe's rolled secrets both send or
//!    need several).
//! 4. **Timestamp tolerance**, only after a signature matched. The timestamp is part of the
//!    signed bytes, so checking it afterwards means a forged header gets [`SigError::NoMatch`]
//!    whatever its timestamp: an attacker cannot probe our clock window, and
//!    [`SigError::TooOld`] / [`SigError::TooNew`] are only ever reported for genuinely signed
//!    deliveries (replays or clock skew), which makes them meaningful in logs.
//!
//! # Bounds
//! At most [`MAX_SIGNATURES`] `v1` entries per header are considered; later ones are ignored.
//! Work is one HMAC over the body per secret plus `secrets x signatures` 32-byte comparisons.
//! Nothing here panics on any input and nothing allocates in proportion to the header size.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

type HmacSha256 = Hmac<Sha256>;

/// Most `v1` signatures considered per header. Providers send one, or two while a secret is
/// being rolled; 32 is generous and caps the work a hostile header can cause.
pub const MAX_SIGNATURES: usize = 32;

/// Length of an HMAC-SHA256 tag; `v1` values of any other decoded length cannot match.
const TAG_LEN: usize = 32;

/// Prefix of Standard Webhooks (and Stripe) secrets. Stripe keys on the whole string including
/// it; Standard Webhooks strips it and base64-decodes the rest.
const SECRET_PREFIX: &str = "whsec_";

/// Standard base64 that accepts input with or without `=` padding (secrets are sometimes
/// stored unpadded; the Python library accepts both, so we do too).
const BASE64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Which signature scheme a webhook endpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// `Stripe-Signature: t=<unix>,v1=<hex>[,v1=...][,v0=...]`, HMAC key = secret string bytes.
    Stripe,
    /// Standard Webhooks / Svix: `webhook-id`, `webhook-timestamp`, `webhook-signature`
    /// (or the `svix-` equivalents), HMAC key = base64-decoded secret.
    Standard,
}

impl Provider {
    /// Parses the configured provider name: `"stripe"` or `"standard"` (ASCII case-insensitive).
    pub fn parse(name: &str) -> Option<Provider> {
        if name.eq_ignore_ascii_case("stripe") {
            Some(Provider::Stripe)
        } else if name.eq_ignore_ascii_case("standard") {
            Some(Provider::Standard)
        } else {
            None
        }
    }
}

/// Why a delivery was rejected. Messages never contain secrets, signatures or header values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SigError {
    /// A required header, or a required part of one (`t`, `v1`), is absent or empty.
    Missing(&'static str),
    /// A header is present but cannot be parsed.
    Malformed(String),
    /// No configured secret produces any of the `v1` signatures sent.
    NoMatch,
    /// Correctly signed, but `now - ts > tolerance`.
    TooOld { ts: i64, now: i64, tolerance: i64 },
    /// Correctly signed, but `ts - now > tolerance`.
    TooNew { ts: i64, now: i64, tolerance: i64 },
    /// The body exceeds the configured limit; nothing was parsed or hashed.
    TooLarge { len: usize, max: usize },
}

impl SigError {
    /// Stable machine-readable category, for mapping to an SQLSTATE or a stored status:
    /// `invalid_signature`, `timestamp_outside_tolerance` or `body_too_large`.
    pub fn code(&self) -> &'static str {
        match self {
            SigError::Missing(_) | SigError::Malformed(_) | SigError::NoMatch => {
                "invalid_signature"
            }
            SigError::TooOld { .. } | SigError::TooNew { .. } => "timestamp_outside_tolerance",
            SigError::TooLarge { .. } => "body_too_large",
        }
    }
}

impl fmt::Display for SigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SigError::Missing(what) => write!(f, "invalid signature: missing {what}"),
            SigError::Malformed(why) => write!(f, "invalid signature: malformed header: {why}"),
            SigError::NoMatch => write!(
                f,
                "invalid signature: no signature matches the payload with any configured secret"
            ),
            SigError::TooOld { ts, now, tolerance } => write!(
                f,
                "timestamp outside tolerance: {ts} is {}s before now ({now}); tolerance is {tolerance}s",
                i128::from(*now) - i128::from(*ts)
            ),
            SigError::TooNew { ts, now, tolerance } => write!(
                f,
                "timestamp outside tolerance: {ts} is {}s after now ({now}); tolerance is {tolerance}s",
                i128::from(*ts) - i128::from(*now)
            ),
            SigError::TooLarge { len, max } => {
                write!(f, "body too large: {len} bytes exceeds the limit of {max} bytes")
            }
        }
    }
}

impl std::error::Error for SigError {}

/// What a successful verification established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The signed delivery timestamp (unix seconds). Stripe makes a new one per retry.
    pub timestamp: i64,
    /// Standard Webhooks message id (`webhook-id` / `svix-id`), stable across retries and
    /// usable as an idempotency key. `None` for Stripe, whose id is `event.id` in the body.
    pub webhook_id: Option<String>,
}

/// Verifies one delivery.
///
/// * `secrets`: every currently valid secret for the endpoint (old and new while rotating).
///   Empty secrets, and for [`Provider::Standard`] secrets that are not valid base64, are
///   skipped: they can never match. No secrets at all gives [`SigError::NoMatch`].
/// * `header(name)`: case-insensitive request header lookup done by the caller; the names
///   asked for are always lowercase.
/// * `now_unix`, `tolerance_secs`: fails when `|now - t| > tolerance`. Tolerance `0` therefore
///   means "exact second only", and a negative tolerance rejects everything; there is no
///   "disable the check" value on purpose (Stripe warns that 0 disables it in their SDKs).
/// * `max_bytes`: bodies longer than this are rejected before anything else is done.
///
/// See the module docs for the order of checks.
pub fn verify(
    provider: Provider,
    secrets: &[&str],
    header: &dyn Fn(&str) -> Option<String>,
    body: &[u8],
    now_unix: i64,
    tolerance_secs: i64,
    max_bytes: usize,
) -> Result<Verified, SigError> {
    if body.len() > max_bytes {
        return Err(SigError::TooLarge {
            len: body.len(),
            max: max_bytes,
        });
    }
    let verified = match provider {
        Provider::Stripe => verify_stripe(secrets, header, body)?,
        Provider::Standard => verify_standard(secrets, header, body)?,
    };
    check_tolerance(verified.timestamp, now_unix, tolerance_secs)?;
    Ok(verified)
}

/// Builds a complete `Stripe-Signature` header value, `t=<t>,v1=<hex>`, as Stripe would send.
pub fn sign_stripe(secret: &str, t: i64, body: &[u8]) -> String {
    let tag = stripe_mac(secret.as_bytes(), t, body)
        .map(|mac| hex::encode(mac.finalize().into_bytes()))
        // Unreachable (HMAC accepts keys of any length); an empty v1 never verifies, and we
        // prefer that to a panic.
        .unwrap_or_default();
    format!("t={t},v1={tag}")
}

/// Builds a Standard Webhooks `webhook-signature` entry, `v1,<base64>`.
///
/// Fails with [`SigError::Malformed`] when the secret is not `whsec_`-prefixed (or bare)
/// base64 of a non-empty key.
pub fn sign_standard(secret: &str, id: &str, t: i64, body: &[u8]) -> Result<String, SigError> {
    let key = standard_key(secret)
        .ok_or_else(|| SigError::Malformed("secret is not valid non-empty base64".into()))?;
    let mac = standard_mac(&key, id, t, body)
        .ok_or_else(|| SigError::Malformed("secret cannot be used as an HMAC key".into()))?;
    Ok(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

// ---------------------------------------------------------------------------------------------
// Stripe

fn verify_stripe(
    secrets: &[&str],
    header: &dyn Fn(&str) -> Option<String>,
    body: &[u8],
) -> Result<Verified, SigError> {
    let value =
        non_empty(header("stripe-signature")).ok_or(SigError::Missing("stripe-signature"))?;

    let mut timestamp: Option<i64> = None;
    let mut saw_v1 = false;
    let mut candidates: Vec<[u8; TAG_LEN]> = Vec::new();
    let mut v1_seen = 0usize;

    for element in value.split(',') {
        // Elements may carry spaces around them (Ruby splits on /,\s*/, .NET trims).
        let element = element.trim();
        // Elements without '=' (including empty ones from stray commas) are ignored, like
        // unknown schemes: only `t` and `v1` matter.
        let Some((key, val)) = element.split_once('=') else {
            continue;
        };
        match key {
            "t" => {
                if timestamp.is_some() {
                    return Err(SigError::Malformed(
                        "stripe-signature has more than one t".into(),
                    ));
                }
                timestamp = Some(parse_unix(val).ok_or_else(|| {
                    SigError::Malformed("stripe-signature t is not a unix timestamp".into())
                })?);
            }
            "v1" => {
                saw_v1 = true;
                v1_seen = v1_seen.saturating_add(1);
                if v1_seen > MAX_SIGNATURES {
                    continue;
                }
                // Non-hex or wrong-length values are ignored (as stripe-go does): they simply
                // cannot match.
                let mut tag = [0u8; TAG_LEN];
                if hex::decode_to_slice(val, &mut tag).is_ok() {
                    candidates.push(tag);
                }
            }
            // `v0` is Stripe's fake test-mode scheme; honouring it, or anything else, would
            // allow a downgrade. Ignore.
            _ => {}
        }
    }

    let t = timestamp.ok_or(SigError::Missing("t"))?;
    if !saw_v1 {
        return Err(SigError::Missing("v1"));
    }
    let matched = secrets
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| stripe_mac(s.as_bytes(), t, body))
        .any(|mac| any_tag_matches(&mac, &candidates));
    if !matched {
        return Err(SigError::NoMatch);
    }
    Ok(Verified {
        timestamp: t,
        webhook_id: None,
    })
}

/// HMAC-SHA256 over `"{t}.{body}"`, keyed with the secret string's bytes (including `whsec_`,
/// not base64-decoded: this is what every Stripe SDK does).
fn stripe_mac(key: &[u8], t: i64, body: &[u8]) -> Option<HmacSha256> {
    let mut mac = HmacSha256::new_from_slice(key).ok()?;
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(mac)
}

// ---------------------------------------------------------------------------------------------
// Standard Webhooks

fn verify_standard(
    secrets: &[&str],
    header: &dyn Fn(&str) -> Option<String>,
    body: &[u8],
) -> Result<Verified, SigError> {
    // Each header falls back to its svix- name individually, as the svix library does.
    let id = non_empty(header("webhook-id"))
        .or_else(|| non_empty(header("svix-id")))
        .ok_or(SigError::Missing("webhook-id"))?;
    let ts_value = non_empty(header("webhook-timestamp"))
        .or_else(|| non_empty(header("svix-timestamp")))
        .ok_or(SigError::Missing("webhook-timestamp"))?;
    let sig_value = non_empty(header("webhook-signature"))
        .or_else(|| non_empty(header("svix-signature")))
        .ok_or(SigError::Missing("webhook-signature"))?;

    let id = id.trim();
    // The signed content is "{id}.{ts}.{body}": a '.' in the id would let the same signed
    // bytes be re-split into a different id and timestamp (a replay-window bypass). The spec
    // forbids it, so refuse rather than guess.
    if id.contains('.') {
        return Err(SigError::Malformed("webhook-id contains '.'".into()));
    }
    let t = parse_unix(ts_value.trim())
        .ok_or_else(|| SigError::Malformed("webhook-timestamp is not a unix timestamp".into()))?;

    let mut saw_v1 = false;
    let mut v1_seen = 0usize;
    let mut candidates: Vec<[u8; TAG_LEN]> = Vec::new();
    for entry in sig_value.split_ascii_whitespace() {
        let Some((version, sig)) = entry.split_once(',') else {
            continue;
        };
        // Only v1 (HMAC-SHA256) is verified; v1a (ed25519), v2, ... are ignored.
        if version != "v1" {
            continue;
        }
        saw_v1 = true;
        v1_seen = v1_seen.saturating_add(1);
        if v1_seen > MAX_SIGNATURES {
            continue;
        }
        // A 64-byte buffer holds any sane input; longer or undecodable values just fail to
        // decode and are ignored, as is any decoded length other than 32.
        let mut buf = [0u8; 64];
        if let Ok(TAG_LEN) = BASE64_LENIENT.decode_slice(sig, &mut buf) {
            let mut tag = [0u8; TAG_LEN];
            tag.copy_from_slice(&buf[..TAG_LEN]);
            candidates.push(tag);
        }
    }
    if !saw_v1 {
        return Err(SigError::Missing("v1"));
    }

    let matched = secrets
        .iter()
        .filter_map(|s| standard_key(s))
        .filter_map(|key| standard_mac(&key, id, t, body))
        .any(|mac| any_tag_matches(&mac, &candidates));
    if !matched {
        return Err(SigError::NoMatch);
    }
    Ok(Verified {
        timestamp: t,
        webhook_id: Some(id.to_owned()),
    })
}

/// The HMAC key of a Standard Webhooks secret: base64 of the part after `whsec_` (or of the
/// whole string if there is no prefix, like the svix library), padded or not. `None` when it
/// does not decode or decodes to nothing.
fn standard_key(secret: &str) -> Option<Vec<u8>> {
    let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    let key = BASE64_LENIENT.decode(encoded).ok()?;
    if key.is_empty() {
        None
    } else {
        Some(key)
    }
}

/// HMAC-SHA256 over `"{id}.{t}.{body}"`.
fn standard_mac(key: &[u8], id: &str, t: i64, body: &[u8]) -> Option<HmacSha256> {
    let mut mac = HmacSha256::new_from_slice(key).ok()?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(mac)
}

// ---------------------------------------------------------------------------------------------
// Shared helpers

/// Constant-time comparison of the expected tag with each candidate (`verify_slice` uses
/// `subtle`). Which candidate matched may leak through timing; that reveals nothing secret.
fn any_tag_matches(mac: &HmacSha256, candidates: &[[u8; TAG_LEN]]) -> bool {
    candidates
        .iter()
        .any(|tag| mac.clone().verify_slice(tag).is_ok())
}

/// Treats an absent, empty or all-whitespace header as missing.
fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

/// Strict unix-seconds parser: 1 to 18 ASCII digits, so no sign, no spaces and no overflow
/// (`str::parse` alone would accept a leading `+`).
fn parse_unix(s: &str) -> Option<i64> {
    if s.is_empty() || s.len() > 18 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Symmetric tolerance: `|now - ts| > tolerance` fails. Computed in i128 so extreme values
/// cannot overflow.
fn check_tolerance(ts: i64, now: i64, tolerance: i64) -> Result<(), SigError> {
    let delta = i128::from(now) - i128::from(ts);
    let tol = i128::from(tolerance);
    if delta > tol {
        Err(SigError::TooOld { ts, now, tolerance })
    } else if -delta > tol {
        Err(SigError::TooNew { ts, now, tolerance })
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// Known answers from the providers' SDK test suites; see tests/vectors/README.md.
    const VECTORS: &str = include_str!("../../tests/vectors/signature-known-answers.json");

    const DAY: i64 = 86_400;
    const MAX: usize = 1 << 20;

    /// Case-insensitive header map, as the caller would implement it.
    fn headers(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        }
    }

    fn stripe(
        secrets: &[&str],
        sig: &str,
        body: &[u8],
        now: i64,
        tol: i64,
    ) -> Result<Verified, SigError> {
        let h = headers(&[("Stripe-Signature", sig)]);
        verify(Provider::Stripe, secrets, &h, body, now, tol, MAX)
    }

    fn standard(
        secrets: &[&str],
        pairs: &[(&str, &str)],
        body: &[u8],
        now: i64,
        tol: i64,
    ) -> Result<Verified, SigError> {
        let h = headers(pairs);
        verify(Provider::Standard, secrets, &h, body, now, tol, MAX)
    }

    // Standard Webhooks known answer (WEBHOOKS.md section 6).
    const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SW_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SW_TS: i64 = 1_614_265_330;
    const SW_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SW_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn sw_headers(sig: &str) -> Vec<(&'static str, String)> {
        vec![
            ("webhook-id", SW_ID.to_owned()),
            ("webhook-timestamp", SW_TS.to_string()),
            ("webhook-signature", sig.to_owned()),
        ]
    }

    fn sw(secrets: &[&str], sig: &str, now: i64) -> Result<Verified, SigError> {
        let owned = sw_headers(sig);
        let pairs: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
        standard(secrets, &pairs, SW_BODY, now, 300)
    }

    const BODY: &[u8] = br#"{"id":"evt_1","object":"event"}"#;
    const T: i64 = 1_700_000_000;
    const SECRET: &str = "whsec_test_secret";

    // -- known-answer vectors ------------------------------------------------------------------

    #[test]
    fn known_answer_vectors() {
        let doc: serde_json::Value = serde_json::from_str(VECTORS).expect("vector JSON parses");
        let cases = doc["cases"].as_array().expect("cases array");
        let (mut signed, mut valid, mut invalid) = (0, 0, 0);
        for case in cases {
            let id = case["id"].as_str().expect("id");
            let secret = case["secret"].as_str().expect("secret");
            let payload = case["payload"].as_str().expect("payload").as_bytes();
            let expected = case["expected"].as_str().expect("expected");

            if expected == "sign" {
                let msg_id = case["msg_id"].as_str().expect("msg_id");
                let ts = case["timestamp"].as_i64().expect("timestamp");
                let want = case["expected_signature"]
                    .as_str()
                    .expect("expected_signature");
                assert_eq!(
                    sign_standard(secret, msg_id, ts, payload).as_deref(),
                    Ok(want),
                    "{id}"
                );
                // And what we sign, we verify.
                let ts_s = ts.to_string();
                let pairs = [
                    ("webhook-id", msg_id),
                    ("webhook-timestamp", ts_s.as_str()),
                    ("webhook-signature", want),
                ];
                assert!(standard(&[secret], &pairs, payload, ts, 0).is_ok(), "{id}");
                signed += 1;
                continue;
            }

            let now = case["now"].as_i64().expect("now");
            let tol = case["tolerance_seconds"]
                .as_i64()
                .expect("tolerance_seconds");
            let (result, ts, webhook_id) =
                if let Some(sig) = case["stripe_signature_header"].as_str() {
                    let t = sig
                        .split(',')
                        .find_map(|e| e.strip_prefix("t="))
                        .and_then(|t| t.parse::<i64>().ok())
                        .expect("t in vector header");
                    (stripe(&[secret], sig, payload, now, tol), t, None)
                } else {
                    let map = case["headers"].as_object().expect("headers object");
                    let pairs: Vec<(&str, &str)> = map
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str().expect("header string")))
                        .collect();
                    let t: i64 = map["webhook-timestamp"]
                        .as_str()
                        .expect("ts")
                        .parse()
                        .expect("ts int");
                    let wid = map["webhook-id"].as_str().map(str::to_owned);
                    (standard(&[secret], &pairs, payload, now, tol), t, wid)
                };

            match expected {
                "valid" => {
                    assert_eq!(
                        result,
                        Ok(Verified {
                            timestamp: ts,
                            webhook_id
                        }),
                        "{id}"
                    );
                    valid += 1;
                }
                "invalid" => {
                    let reason = case["reason"].as_str().expect("reason");
                    let want = if reason.starts_with("timestamp_outside_tolerance") {
                        if now > ts {
                            SigError::TooOld {
                                ts,
                                now,
                                tolerance: tol,
                            }
                        } else {
                            SigError::TooNew {
                                ts,
                                now,
                                tolerance: tol,
                            }
                        }
                    } else if reason.starts_with("no_matching_signature") {
                        SigError::NoMatch
                    } else {
                        panic!("{id}: unmapped reason {reason:?}; extend this test");
                    };
                    assert_eq!(result, Err(want), "{id}");
                    invalid += 1;
                }
                other => panic!("{id}: unknown expected outcome {other:?}"),
            }
        }
        assert_eq!(signed + valid + invalid, cases.len());
        assert!(
            signed >= 2 && valid >= 3 && invalid >= 2,
            "vectors went missing"
        );
    }

    #[test]
    fn provider_parse() {
        assert_eq!(Provider::parse("stripe"), Some(Provider::Stripe));
        assert_eq!(Provider::parse("standard"), Some(Provider::Standard));
        assert_eq!(Provider::parse("Stripe"), Some(Provider::Stripe));
        assert_eq!(Provider::parse("svix"), None);
        assert_eq!(Provider::parse(""), None);
        assert_eq!(Provider::parse(" stripe"), None);
    }

    // -- Stripe --------------------------------------------------------------------------------

    #[test]
    fn stripe_round_trip() {
        let sig = sign_stripe(SECRET, T, BODY);
        assert!(sig.starts_with(&format!("t={T},v1=")));
        assert_eq!(sig.len(), format!("t={T},v1=").len() + 64);
        assert_eq!(
            stripe(&[SECRET], &sig, BODY, T, 300),
            Ok(Verified {
                timestamp: T,
                webhook_id: None
            })
        );
        assert_eq!(
            stripe(&[SECRET], &sig, b"{\"id\":\"evt_2\"}", T, 300),
            Err(SigError::NoMatch)
        );
        assert_eq!(
            stripe(&["whsec_other"], &sig, BODY, T, 300),
            Err(SigError::NoMatch)
        );
    }

    #[test]
    fn stripe_key_includes_whsec_prefix() {
        // Signing with the bare part must not verify against the full secret.
        let sig = sign_stripe("test_secret", T, BODY);
        assert_eq!(
            stripe(&[SECRET], &sig, BODY, T, 300),
            Err(SigError::NoMatch)
        );
    }

    #[test]
    fn stripe_missing_header() {
        let none = headers(&[]);
        assert_eq!(
            verify(Provider::Stripe, &[SECRET], &none, BODY, T, 300, MAX),
            Err(SigError::Missing("stripe-signature"))
        );
        assert_eq!(
            stripe(&[SECRET], "", BODY, T, 300),
            Err(SigError::Missing("stripe-signature"))
        );
        assert_eq!(
            stripe(&[SECRET], "   ", BODY, T, 300),
            Err(SigError::Missing("stripe-signature"))
        );
    }

    #[test]
    fn stripe_header_name_asked_in_lowercase() {
        let sig = sign_stripe(SECRET, T, BODY);
        let lookup = |name: &str| (name == "stripe-signature").then(|| sig.clone());
        assert!(verify(Provider::Stripe, &[SECRET], &lookup, BODY, T, 300, MAX).is_ok());
    }

    #[test]
    fn stripe_missing_t() {
        let sig = sign_stripe(SECRET, T, BODY);
        let v1 = sig.split_once(',').expect("comma").1;
        assert_eq!(
            stripe(&[SECRET], v1, BODY, T, 300),
            Err(SigError::Missing("t"))
        );
    }

    #[test]
    fn stripe_missing_v1() {
        assert_eq!(
            stripe(&[SECRET], &format!("t={T}"), BODY, T, 300),
            Err(SigError::Missing("v1"))
        );
    }

    #[test]
    fn stripe_only_v0_even_if_correct_is_rejected() {
        // A correct MAC under the v0 label must not be accepted (downgrade protection).
        let sig = sign_stripe(SECRET, T, BODY).replace("v1=", "v0=");
        assert_eq!(
            stripe(&[SECRET], &sig, BODY, T, 300),
            Err(SigError::Missing("v1"))
        );
    }

    #[test]
    fn stripe_bad_t() {
        for t in [
            "",
            "abc",
            "+1700000000",
            "-5",
            "1.5",
            "17 00",
            "0x10",
            "1234567890123456789",
            "١٢٣",
        ] {
            let sig = format!("t={t},v1={}", "00".repeat(32));
            assert!(
                matches!(
                    stripe(&[SECRET], &sig, BODY, T, 300),
                    Err(SigError::Malformed(_))
                ),
                "t={t:?}"
            );
        }
        let dup = format!("t={T},{}", sign_stripe(SECRET, T, BODY));
        assert!(matches!(
            stripe(&[SECRET], &dup, BODY, T, 300),
            Err(SigError::Malformed(_))
        ));
    }

    #[test]
    fn stripe_bad_hex_is_ignored() {
        let good = sign_stripe(SECRET, T, BODY);
        let good_v1 = good.split_once(",v1=").expect("v1").1.to_owned();
        for bad in [
            "zz".repeat(32),
            "abc".into(),
            String::new(),
            format!("{good_v1}00"),
            good_v1[..62].to_owned(),
        ] {
            let only_bad = format!("t={T},v1={bad}");
            assert_eq!(
                stripe(&[SECRET], &only_bad, BODY, T, 300),
                Err(SigError::NoMatch),
                "{bad:?}"
            );
            let bad_then_good = format!("t={T},v1={bad},v1={good_v1}");
            assert!(
                stripe(&[SECRET], &bad_then_good, BODY, T, 300).is_ok(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn stripe_spaces_around_elements() {
        let good = sign_stripe(SECRET, T, BODY);
        let v1 = good.split_once(",v1=").expect("v1").1;
        let spaced = format!("  t={T} ,  v1={v1}\t, v0=abc ,, junk ");
        assert!(stripe(&[SECRET], &spaced, BODY, T, 300).is_ok());
    }

    #[test]
    fn stripe_several_v1_one_good() {
        let good = sign_stripe(SECRET, T, BODY);
        let v1 = good.split_once(",v1=").expect("v1").1;
        let other = sign_stripe("whsec_old", T, BODY);
        let v1_other = other.split_once(",v1=").expect("v1").1;
        let sig = format!("t={T},v1={v1_other},v1={v1},v0={v1_other}");
        assert!(stripe(&[SECRET], &sig, BODY, T, 300).is_ok());
    }

    #[test]
    fn stripe_rotation_second_secret_matches() {
        let sig = sign_stripe("whsec_new", T, BODY);
        assert!(stripe(&["whsec_old", "whsec_new"], &sig, BODY, T, 300).is_ok());
        assert_eq!(
            stripe(&["whsec_old"], &sig, BODY, T, 300),
            Err(SigError::NoMatch)
        );
        assert_eq!(stripe(&[], &sig, BODY, T, 300), Err(SigError::NoMatch));
    }

    #[test]
    fn empty_secret_never_matches() {
        let sig = sign_stripe("", T, BODY);
        assert_eq!(stripe(&[""], &sig, BODY, T, 300), Err(SigError::NoMatch));
        assert!(sign_standard("whsec_", SW_ID, SW_TS, SW_BODY).is_err());
        assert!(sign_standard("", SW_ID, SW_TS, SW_BODY).is_err());
    }

    #[test]
    fn signature_cap() {
        let good = sign_stripe(SECRET, T, BODY);
        let v1 = good.split_once(",v1=").expect("v1").1;
        let filler = format!(",v1={}", "00".repeat(32));
        // The good one as the 32nd v1: considered.
        let at_32 = format!("t={T}{},v1={v1}", filler.repeat(MAX_SIGNATURES - 1));
        assert!(stripe(&[SECRET], &at_32, BODY, T, 300).is_ok());
        // As the 33rd: ignored.
        let at_33 = format!("t={T}{},v1={v1}", filler.repeat(MAX_SIGNATURES));
        assert_eq!(
            stripe(&[SECRET], &at_33, BODY, T, 300),
            Err(SigError::NoMatch)
        );

        let sw_fill = format!("v1,{} ", STANDARD.encode([0u8; 32]));
        let sw_32 = format!("{}{SW_SIG}", sw_fill.repeat(MAX_SIGNATURES - 1));
        assert!(sw(&[SW_SECRET], &sw_32, SW_TS).is_ok());
        let sw_33 = format!("{}{SW_SIG}", sw_fill.repeat(MAX_SIGNATURES));
        assert_eq!(sw(&[SW_SECRET], &sw_33, SW_TS), Err(SigError::NoMatch));
    }

    // -- tolerance -----------------------------------------------------------------------------

    #[test]
    fn tolerance_boundaries_both_ways() {
        let sig = sign_stripe(SECRET, T, BODY);
        let tol = 300;
        assert!(
            stripe(&[SECRET], &sig, BODY, T + tol, tol).is_ok(),
            "exactly tol in the past"
        );
        assert!(
            stripe(&[SECRET], &sig, BODY, T - tol, tol).is_ok(),
            "exactly tol in the future"
        );
        assert_eq!(
            stripe(&[SECRET], &sig, BODY, T + tol + 1, tol),
            Err(SigError::TooOld {
                ts: T,
                now: T + tol + 1,
                tolerance: tol
            })
        );
        assert_eq!(
            stripe(&[SECRET], &sig, BODY, T - tol - 1, tol),
            Err(SigError::TooNew {
                ts: T,
                now: T - tol - 1,
                tolerance: tol
            })
        );
        // Same rule for Standard Webhooks.
        assert!(sw(&[SW_SECRET], SW_SIG, SW_TS + 300).is_ok());
        assert!(sw(&[SW_SECRET], SW_SIG, SW_TS - 300).is_ok());
        assert!(matches!(
            sw(&[SW_SECRET], SW_SIG, SW_TS + 301),
            Err(SigError::TooOld { .. })
        ));
        assert!(matches!(
            sw(&[SW_SECRET], SW_SIG, SW_TS - 301),
            Err(SigError::TooNew { .. })
        ));
    }

    #[test]
    fn tolerance_zero_is_exact_and_negative_rejects_all() {
        let sig = sign_stripe(SECRET, T, BODY);
        assert!(stripe(&[SECRET], &sig, BODY, T, 0).is_ok());
        assert!(matches!(
            stripe(&[SECRET], &sig, BODY, T + 1, 0),
            Err(SigError::TooOld { .. })
        ));
        assert!(matches!(
            stripe(&[SECRET], &sig, BODY, T - 1, 0),
            Err(SigError::TooNew { .. })
        ));
        assert!(stripe(&[SECRET], &sig, BODY, T, -1).is_err());
    }

    #[test]
    fn extreme_clock_values_do_not_overflow() {
        let t = 999_999_999_999_999_999; // largest accepted timestamp
        let sig = sign_stripe(SECRET, t, BODY);
        assert!(matches!(
            stripe(&[SECRET], &sig, BODY, i64::MIN, i64::MAX),
            Err(SigError::TooNew { .. })
        ));
        assert!(stripe(&[SECRET], &sig, BODY, t, i64::MAX).is_ok());
        let sig0 = sign_stripe(SECRET, 0, BODY);
        assert!(matches!(
            stripe(&[SECRET], &sig0, BODY, i64::MAX, 0),
            Err(SigError::TooOld { .. })
        ));
        let e = SigError::TooOld {
            ts: i64::MIN,
            now: i64::MAX,
            tolerance: 0,
        };
        assert!(e.to_string().contains("18446744073709551615"));
    }

    #[test]
    fn forged_header_gets_no_match_not_timestamp_error() {
        // Signature is checked before the clock, so a forgery cannot probe the window.
        let forged = format!("t={},v1={}", T - DAY, "ab".repeat(32));
        assert_eq!(
            stripe(&[SECRET], &forged, BODY, T, 300),
            Err(SigError::NoMatch)
        );
    }

    // -- body size -----------------------------------------------------------------------------

    #[test]
    fn body_over_limit_rejected_before_any_parsing_or_hashing() {
        let calls = Cell::new(0);
        let lookup = |_: &str| {
            calls.set(calls.get() + 1);
            Some(sign_stripe(SECRET, T, BODY))
        };
        for provider in [Provider::Stripe, Provider::Standard] {
            assert_eq!(
                verify(provider, &[SECRET], &lookup, BODY, T, 300, BODY.len() - 1),
                Err(SigError::TooLarge {
                    len: BODY.len(),
                    max: BODY.len() - 1
                })
            );
        }
        assert_eq!(calls.get(), 0, "no header was even looked up");
        // At the limit is fine.
        assert!(verify(
            Provider::Stripe,
            &[SECRET],
            &lookup,
            BODY,
            T,
            300,
            BODY.len()
        )
        .is_ok());
        assert_eq!(
            verify(Provider::Stripe, &[SECRET], &lookup, b"", T, 300, 0).map(|v| v.timestamp),
            Err(SigError::NoMatch)
        );
    }

    // -- Standard Webhooks ---------------------------------------------------------------------

    #[test]
    fn standard_known_answer_and_webhook_id() {
        assert_eq!(
            sign_standard(SW_SECRET, SW_ID, SW_TS, SW_BODY).as_deref(),
            Ok(SW_SIG)
        );
        assert_eq!(
            sw(&[SW_SECRET], SW_SIG, SW_TS),
            Ok(Verified {
                timestamp: SW_TS,
                webhook_id: Some(SW_ID.to_owned())
            })
        );
    }

    #[test]
    fn standard_round_trip_and_tamper() {
        let secret = format!(
            "whsec_{}",
            STANDARD.encode(b"0123456789abcdef0123456789abcdef")
        );
        let sig = sign_standard(&secret, "msg_1", T, BODY).expect("signs");
        let t = T.to_string();
        let ok = [
            ("webhook-id", "msg_1"),
            ("webhook-timestamp", t.as_str()),
            ("webhook-signature", sig.as_str()),
        ];
        assert!(standard(&[&secret], &ok, BODY, T, 300).is_ok());
        assert_eq!(
            standard(&[&secret], &ok, b"{}", T, 300),
            Err(SigError::NoMatch)
        );
        let other_id = [
            ("webhook-id", "msg_2"),
            ("webhook-timestamp", t.as_str()),
            ("webhook-signature", sig.as_str()),
        ];
        assert_eq!(
            standard(&[&secret], &other_id, BODY, T, 300),
            Err(SigError::NoMatch)
        );
        let t2 = (T + 1).to_string();
        let other_t = [
            ("webhook-id", "msg_1"),
            ("webhook-timestamp", t2.as_str()),
            ("webhook-signature", sig.as_str()),
        ];
        assert_eq!(
            standard(&[&secret], &other_t, BODY, T, 300),
            Err(SigError::NoMatch)
        );
    }

    #[test]
    fn standard_svix_header_names() {
        let ts = SW_TS.to_string();
        let svix = [
            ("Svix-Id", SW_ID),
            ("Svix-Timestamp", ts.as_str()),
            ("Svix-Signature", SW_SIG),
        ];
        assert_eq!(
            standard(&[SW_SECRET], &svix, SW_BODY, SW_TS, 300),
            Ok(Verified {
                timestamp: SW_TS,
                webhook_id: Some(SW_ID.to_owned())
            })
        );
        // webhook-* wins when both are present.
        let both = [
            ("webhook-id", SW_ID),
            ("svix-id", "msg_other"),
            ("webhook-timestamp", ts.as_str()),
            ("webhook-signature", SW_SIG),
        ];
        assert!(standard(&[SW_SECRET], &both, SW_BODY, SW_TS, 300).is_ok());
    }

    #[test]
    fn standard_missing_headers() {
        let ts = SW_TS.to_string();
        let full = [
            ("webhook-id", SW_ID),
            ("webhook-timestamp", ts.as_str()),
            ("webhook-signature", SW_SIG),
        ];
        for (skip, name) in [
            (0, "webhook-id"),
            (1, "webhook-timestamp"),
            (2, "webhook-signature"),
        ] {
            let pairs: Vec<(&str, &str)> = full
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, p)| *p)
                .collect();
            assert_eq!(
                standard(&[SW_SECRET], &pairs, SW_BODY, SW_TS, 300),
                Err(SigError::Missing(name))
            );
        }
        assert_eq!(
            sw(&[SW_SECRET], "", SW_TS),
            Err(SigError::Missing("webhook-signature"))
        );
    }

    #[test]
    fn standard_malformed_headers() {
        let bad_ts = [
            ("webhook-id", SW_ID),
            ("webhook-timestamp", "16142653.30"),
            ("webhook-signature", SW_SIG),
        ];
        assert!(matches!(
            standard(&[SW_SECRET], &bad_ts, SW_BODY, SW_TS, 300),
            Err(SigError::Malformed(_))
        ));
        let ts = SW_TS.to_string();
        let dotted = [
            ("webhook-id", "msg.1"),
            ("webhook-timestamp", ts.as_str()),
            ("webhook-signature", SW_SIG),
        ];
        assert!(matches!(
            standard(&[SW_SECRET], &dotted, SW_BODY, SW_TS, 300),
            Err(SigError::Malformed(_))
        ));
    }

    #[test]
    fn standard_v2_and_other_versions_ignored() {
        let payload = SW_SIG.trim_start_matches("v1,");
        // Correct bytes under another version label do not count.
        assert_eq!(
            sw(&[SW_SECRET], &format!("v2,{payload} v1a,{payload}"), SW_TS),
            Err(SigError::Missing("v1"))
        );
        // Mixed list as in the libraries' multi-signature test.
        let mixed = format!(
            "v2,{payload} v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v1,{payload}  v2,abc"
        );
        assert!(sw(&[SW_SECRET], &mixed, SW_TS).is_ok());
    }

    #[test]
    fn standard_bad_signature_values_ignored() {
        for bad in [
            "v1,",
            "v1,!!!!",
            "v1,AAAA",
            "v1",
            ",",
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=AAAA",
        ] {
            let r = sw(&[SW_SECRET], bad, SW_TS);
            assert!(
                matches!(r, Err(SigError::NoMatch) | Err(SigError::Missing("v1"))),
                "{bad:?}: {r:?}"
            );
        }
        // Unpadded signature bytes are the same signature.
        assert!(sw(&[SW_SECRET], SW_SIG.trim_end_matches('='), SW_TS).is_ok());
    }

    #[test]
    fn standard_unpadded_and_unprefixed_secret() {
        let key = b"0123456789abcdef0123"; // 20 bytes: base64 needs padding
        let padded = format!("whsec_{}", STANDARD.encode(key));
        assert!(padded.ends_with('='));
        let unpadded = padded.trim_end_matches('=').to_owned();
        let bare = STANDARD.encode(key);
        let sig = sign_standard(&padded, SW_ID, SW_TS, SW_BODY).expect("signs");
        assert_eq!(
            sign_standard(&unpadded, SW_ID, SW_TS, SW_BODY).as_ref(),
            Ok(&sig)
        );
        assert_eq!(
            sign_standard(&bare, SW_ID, SW_TS, SW_BODY).as_ref(),
            Ok(&sig)
        );
        assert!(sw(&[&unpadded], &sig, SW_TS).is_ok());
    }

    #[test]
    fn standard_invalid_base64_secret_cannot_match() {
        let bad = "whsec_not*base64!";
        assert_eq!(sw(&[bad], SW_SIG, SW_TS), Err(SigError::NoMatch));
        // Rotation: the bad one is skipped, the second matches.
        assert!(sw(&[bad, SW_SECRET], SW_SIG, SW_TS).is_ok());
        assert!(matches!(
            sign_standard(bad, SW_ID, SW_TS, SW_BODY),
            Err(SigError::Malformed(_))
        ));
    }

    #[test]
    fn standard_rotation_second_secret_matches() {
        let old = format!("whsec_{}", STANDARD.encode([7u8; 32]));
        assert!(sw(&[&old, SW_SECRET], SW_SIG, SW_TS).is_ok());
        let old_sig = sign_standard(&old, SW_ID, SW_TS, SW_BODY).expect("signs");
        assert!(sw(&[SW_SECRET], &format!("{old_sig} {SW_SIG}"), SW_TS).is_ok());
    }

    // -- robustness ----------------------------------------------------------------------------

    #[test]
    fn junk_headers_never_panic() {
        let long = "v1=".repeat(10_000);
        let junk: Vec<String> = vec![
            "=".into(),
            ",,,".into(),
            "t=".into(),
            "v1=".into(),
            "t=,v1=".into(),
            "t==1,v1==".into(),
            "t=1,v1=é".into(),
            "t=1,v1=ééééééééééééééééééééééééééééééééé".into(),
            "\u{0}".into(),
            "t=99999999999999999999999,v1=00".into(),
            long,
            "v1,".repeat(1000),
            "😀,😀 😀".into(),
        ];
        for j in &junk {
            assert!(stripe(&[SECRET, ""], j, BODY, T, 300).is_err(), "{j:?}");
            let ts = T.to_string();
            for pairs in [
                [
                    ("webhook-id", j.as_str()),
                    ("webhook-timestamp", ts.as_str()),
                    ("webhook-signature", SW_SIG),
                ],
                [
                    ("webhook-id", "m"),
                    ("webhook-timestamp", j.as_str()),
                    ("webhook-signature", SW_SIG),
                ],
                [
                    ("webhook-id", "m"),
                    ("webhook-timestamp", ts.as_str()),
                    ("webhook-signature", j.as_str()),
                ],
            ] {
                assert!(
                    standard(&[SW_SECRET, j.as_str()], &pairs, BODY, T, 300).is_err(),
                    "{j:?}"
                );
            }
        }
    }

    #[test]
    fn errors_have_codes_and_no_secrets() {
        let cases = [
            (SigError::Missing("v1"), "invalid_signature"),
            (SigError::Malformed("x".into()), "invalid_signature"),
            (SigError::NoMatch, "invalid_signature"),
            (
                SigError::TooOld {
                    ts: 1,
                    now: 400,
                    tolerance: 300,
                },
                "timestamp_outside_tolerance",
            ),
            (
                SigError::TooNew {
                    ts: 400,
                    now: 1,
                    tolerance: 300,
                },
                "timestamp_outside_tolerance",
            ),
            (SigError::TooLarge { len: 2, max: 1 }, "body_too_large"),
        ];
        for (e, code) in cases {
            assert_eq!(e.code(), code);
            let msg = e.to_string();
            let prefix = match code {
                "invalid_signature" => "invalid signature",
                "timestamp_outside_tolerance" => "timestamp outside tolerance",
                _ => "body too large",
            };
            assert!(msg.starts_with(prefix), "{msg}");
        }
        assert!(SigError::TooOld {
            ts: 1,
            now: 400,
            tolerance: 300
        }
        .to_string()
        .contains("399s before"));
        // Real failures carry no secret material.
        let sig = sign_stripe(SECRET, T, BODY);
        for r in [
            stripe(&[SECRET], "t=x,v1=00", BODY, T, 300),
            stripe(&["whsec_other"], &sig, BODY, T, 300),
            sw(&["whsec_not*base64!"], SW_SIG, SW_TS),
        ] {
            let msg = r.expect_err("fails").to_string();
            assert!(
                !msg.contains("whsec") && !msg.contains("secret_") && !msg.contains(&sig[13..]),
                "{msg}"
            );
        }
    }
}
