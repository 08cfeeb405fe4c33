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
use std::borrow::Cow;
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
const BASE64_LENIENT: GeneralPurpose =
    GeneralPurpose::new(&alphabet::STANDARD, GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent));

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
            SigError::Missing(_) | SigError::Malformed(_) | SigError::NoMatch => "invalid_signature",
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
            SigError::NoMatch => write!(f, "invalid signature: no signature matches the payload with any configured secret"),
            SigError::TooOld { ts, now, tolerance } => write!(
                f,
                "timestamp outside tolerance: {ts} is {}s before now ({now}); tolerance is {tolerance}s",
                i128::from(*now) - i128::from(*ts)
            ),
            SigError::TooNew { ts, now, tolerance } => {
                write!(f, "timestamp outside tolerance: {ts} is {}s after now ({now}); tolerance is {tolerance}s", i128::from(*ts) - i128::from(*now))
            }
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
///   Secrets [`check_secret`] refuses (blank ones; for [`Provider::Standard`] also those that
///   do not decode) are skipped: they never match, whatever the delivery. No usable secret at
///   all gives [`SigError::NoMatch`].
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
        return Err(SigError::TooLarge { len: body.len(), max: max_bytes });
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
/// Fails with [`SigError::Malformed`] when [`check_secret`] refuses the secret.
pub fn sign_standard(secret: &str, id: &str, t: i64, body: &[u8]) -> Result<String, SigError> {
    let key = secret_key(Provider::Standard, secret).map_err(|p| SigError::Malformed(format!("the secret {p}")))?;
    let mac = standard_mac(&key, id, t, body).ok_or_else(|| SigError::Malformed("secret cannot be used as an HMAC key".into()))?;
    Ok(format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes())))
}

// ---------------------------------------------------------------------------------------------
// Secrets

/// Why a configured secret can never be used to verify a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretProblem {
    /// Empty or whitespace only, after an optional `whsec_` prefix: the HMAC key would be
    /// public (or all but), so anyone could sign.
    Blank,
    /// [`Provider::Standard`]: the part after `whsec_` (or the whole secret, unprefixed) is
    /// not standard base64, padded or not.
    NotBase64,
    /// The key is zero bytes only. HMAC pads short keys with zero bytes, so such a key signs
    /// exactly as the empty key does: anyone could sign.
    ZeroKey,
}

impl fmt::Display for SecretProblem {
    /// Describes the problem without quoting the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SecretProblem::Blank => "is blank (empty or whitespace after any whsec_ prefix): anyone could sign with it",
            SecretProblem::NotBase64 => "is not base64 (whsec_ followed by standard base64 of the key, padding optional)",
            SecretProblem::ZeroKey => "is a key of zero bytes only, which HMAC treats as the empty key: anyone could sign with it",
        })
    }
}

impl std::error::Error for SecretProblem {}

/// Whether `secret` can verify deliveries for `provider`. The one rule for both
/// `billing.add_secret`, which refuses what this refuses, and [`verify`], which skips such
/// secrets (they may have been stored before the rule existed).
pub fn check_secret(provider: Provider, secret: &str) -> Result<(), SecretProblem> {
    secret_key(provider, secret).map(drop)
}

/// The HMAC key of a secret, or why it has none (see [`check_secret`]).
///
/// * Stripe: the secret string's bytes, `whsec_` included, not decoded (every Stripe SDK).
/// * Standard Webhooks: base64 of the part after `whsec_`, or of the whole string if there
///   is no prefix (as the svix and standard-webhooks libraries do), padded or not.
fn secret_key(provider: Provider, secret: &str) -> Result<Cow<'_, [u8]>, SecretProblem> {
    let rest = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    if rest.trim().is_empty() {
        return Err(SecretProblem::Blank);
    }
    let key = match provider {
        Provider::Stripe => Cow::Borrowed(secret.as_bytes()),
        Provider::Standard => Cow::Owned(BASE64_LENIENT.decode(rest).map_err(|_| SecretProblem::NotBase64)?),
    };
    // Also covers a Standard secret that decodes to nothing.
    if key.iter().all(|&b| b == 0) {
        return Err(SecretProblem::ZeroKey);
    }
    Ok(key)
}

// ---------------------------------------------------------------------------------------------
// Stripe

fn verify_stripe(secrets: &[&str], header: &dyn Fn(&str) -> Option<String>, body: &[u8]) -> Result<Verified, SigError> {
    let value = non_empty(header("stripe-signature")).ok_or(SigError::Missing("stripe-signature"))?;

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
                    return Err(SigError::Malformed("stripe-signature has more than one t".into()));
                }
                timestamp = Some(parse_unix(val).ok_or_else(|| SigError::Malformed("stripe-signature t is not a unix timestamp".into()))?);
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
        .filter_map(|s| secret_key(Provider::Stripe, s).ok())
        .filter_map(|key| stripe_mac(&key, t, body))
        .any(|mac| any_tag_matches(&mac, &candidates));
    if !matched {
        return Err(SigError::NoMatch);
    }
    Ok(Verified { timestamp: t, webhook_id: None })
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

fn verify_standard(secrets: &[&str], header: &dyn Fn(&str) -> Option<String>, body: &[u8]) -> Result<Verified, SigError> {
    let [id, ts_value, sig_value] = standard_headers(header)?;

    let id = id.trim();
    // The signed content is "{id}.{ts}.{body}": a '.' in the id would let the same signed
    // bytes be re-split into a different id and timestamp (a replay-window bypass). The spec
    // forbids it, so refuse rather than guess.
    if id.contains('.') {
        return Err(SigError::Malformed("webhook-id contains '.'".into()));
    }
    let t = parse_unix(ts_value.trim()).ok_or_else(|| SigError::Malformed("webhook-timestamp is not a unix timestamp".into()))?;

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
        .filter_map(|s| secret_key(Provider::Standard, s).ok())
        .filter_map(|key| standard_mac(&key, id, t, body))
        .any(|mac| any_tag_matches(&mac, &candidates));
    if !matched {
        return Err(SigError::NoMatch);
    }
    Ok(Verified { timestamp: t, webhook_id: Some(id.to_owned()) })
}

/// The `svix-*` header names, in the order id, timestamp, signature.
const SVIX_HEADERS: [&str; 3] = ["svix-id", "svix-timestamp", "svix-signature"];
/// The Standard Webhooks ("unbranded") header names, in the same order.
const WEBHOOK_HEADERS: [&str; 3] = ["webhook-id", "webhook-timestamp", "webhook-signature"];

/// The id, timestamp and signature headers of one family, taken whole: the `svix-*` three if
/// all are present, else the `webhook-*` three if all are present, else
/// [`SigError::Missing`]. Never a mix: a `svix-*` header cannot stand in for a missing
/// `webhook-*` one, nor the reverse. Absent, empty and all-whitespace headers count as
/// missing.
///
/// This is the svix libraries' rule [src: svix/svix-webhooks `Webhook.verify` in
/// `python/svix/webhooks.py` @1bddea8a and `javascript/src/webhook.ts` @29029490: read the
/// three `svix-*` headers; if any is missing or empty, read the three `webhook-*` headers
/// instead; if any of those is missing or empty, fail with "Missing required headers"]. Not
/// every library agrees: svix's Rust crate (`rust/src/webhooks.rs` @0d9cfaa6, `get_header`)
/// falls back header by header (`svix-*` name, else `webhook-*`), so it accepts a mix; the
/// standard-webhooks libraries (`libraries/python/standardwebhooks/webhooks.py` @52d6249b,
/// `libraries/javascript/src/index.ts` @009bcc00, `libraries/rust/src/lib.rs` @1e88c9ce) read
/// the `webhook-*` names only. We take the whole-family rule, the strictest of those that
/// accept the `svix-*` names.
fn standard_headers(header: &dyn Fn(&str) -> Option<String>) -> Result<[String; 3], SigError> {
    let svix = SVIX_HEADERS.map(|name| non_empty(header(name)));
    if let [Some(id), Some(ts), Some(sig)] = svix {
        return Ok([id, ts, sig]);
    }
    let unbranded = WEBHOOK_HEADERS.map(|name| non_empty(header(name)));
    if let [Some(id), Some(ts), Some(sig)] = unbranded {
        return Ok([id, ts, sig]);
    }
    // Neither family is complete: name a header missing from the family the sender used
    // more of (`webhook-*` on a tie).
    let present = |family: &[Option<String>; 3]| family.iter().flatten().count();
    let (names, family) = if present(&svix) > present(&unbranded) { (SVIX_HEADERS, &svix) } else { (WEBHOOK_HEADERS, &unbranded) };
    let missing = family.iter().position(Option::is_none).unwrap_or(0);
    Err(SigError::Missing(names[missing]))
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
    candidates.iter().any(|tag| mac.clone().verify_slice(tag).is_ok())
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
        let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        move |name: &str| pairs.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone())
    }

    fn stripe(secrets: &[&str], sig: &str, body: &[u8], now: i64, tol: i64) -> Result<Verified, SigError> {
        let h = headers(&[("Stripe-Signature", sig)]);
        verify(Provider::Stripe, secrets, &h, body, now, tol, MAX)
    }

    fn standard(secrets: &[&str], pairs: &[(&str, &str)], body: &[u8], now: i64, tol: i64) -> Result<Verified, SigError> {
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
        vec![("webhook-id", SW_ID.to_owned()), ("webhook-timestamp", SW_TS.to_string()), ("webhook-signature", sig.to_owned())]
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
                let want = case["expected_signature"].as_str().expect("expected_signature");
                assert_eq!(sign_standard(secret, msg_id, ts, payload).as_deref(), Ok(want), "{id}");
                // And what we sign, we verify.
                let ts_s = ts.to_string();
                let pairs = [("webhook-id", msg_id), ("webhook-timestamp", ts_s.as_str()), ("webhook-signature", want)];
                assert!(standard(&[secret], &pairs, payload, ts, 0).is_ok(), "{id}");
                signed += 1;
                continue;
            }

            let now = case["now"].as_i64().expect("now");
            let tol = case["tolerance_seconds"].as_i64().expect("tolerance_seconds");
            let (result, ts, webhook_id) = if let Some(sig) = case["stripe_signature_header"].as_str() {
                let t = sig.split(',').find_map(|e| e.strip_prefix("t=")).and_then(|t| t.parse::<i64>().ok()).expect("t in vector header");
                (stripe(&[secret], sig, payload, now, tol), t, None)
            } else {
                let map = case["headers"].as_object().expect("headers object");
                let pairs: Vec<(&str, &str)> = map.iter().map(|(k, v)| (k.as_str(), v.as_str().expect("header string"))).collect();
                let t: i64 = map["webhook-timestamp"].as_str().expect("ts").parse().expect("ts int");
                let wid = map["webhook-id"].as_str().map(str::to_owned);
                (standard(&[secret], &pairs, payload, now, tol), t, wid)
            };

            match expected {
                "valid" => {
                    assert_eq!(result, Ok(Verified { timestamp: ts, webhook_id }), "{id}");
                    valid += 1;
                }
                "invalid" => {
                    let reason = case["reason"].as_str().expect("reason");
                    let want = if reason.starts_with("timestamp_outside_tolerance") {
                        if now > ts {
                            SigError::TooOld { ts, now, tolerance: tol }
                        } else {
                            SigError::TooNew { ts, now, tolerance: tol }
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
        assert!(signed >= 2 && valid >= 3 && invalid >= 2, "vectors went missing");
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
        assert_eq!(stripe(&[SECRET], &sig, BODY, T, 300), Ok(Verified { timestamp: T, webhook_id: None }));
        assert_eq!(stripe(&[SECRET], &sig, b"{\"id\":\"evt_2\"}", T, 300), Err(SigError::NoMatch));
        assert_eq!(stripe(&["whsec_other"], &sig, BODY, T, 300), Err(SigError::NoMatch));
    }

    #[test]
    fn stripe_key_includes_whsec_prefix() {
        // Signing with the bare part must not verify against the full secret.
        let sig = sign_stripe("test_secret", T, BODY);
        assert_eq!(stripe(&[SECRET], &sig, BODY, T, 300), Err(SigError::NoMatch));
    }

    #[test]
    fn stripe_missing_header() {
        let none = headers(&[]);
        assert_eq!(verify(Provider::Stripe, &[SECRET], &none, BODY, T, 300, MAX), Err(SigError::Missing("stripe-signature")));
        assert_eq!(stripe(&[SECRET], "", BODY, T, 300), Err(SigError::Missing("stripe-signature")));
        assert_eq!(stripe(&[SECRET], "   ", BODY, T, 300), Err(SigError::Missing("stripe-signature")));
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
        assert_eq!(stripe(&[SECRET], v1, BODY, T, 300), Err(SigError::Missing("t")));
    }

    #[test]
    fn stripe_missing_v1() {
        assert_eq!(stripe(&[SECRET], &format!("t={T}"), BODY, T, 300), Err(SigError::Missing("v1")));
    }

    #[test]
    fn stripe_only_v0_even_if_correct_is_rejected() {
        // A correct MAC under the v0 label must not be accepted (downgrade protection).
        let sig = sign_stripe(SECRET, T, BODY).replace("v1=", "v0=");
        assert_eq!(stripe(&[SECRET], &sig, BODY, T, 300), Err(SigError::Missing("v1")));
    }

    #[test]
    fn stripe_bad_t() {
        for t in ["", "abc", "+1700000000", "-5", "1.5", "17 00", "0x10", "1234567890123456789", "١٢٣"] {
            let sig = format!("t={t},v1={}", "00".repeat(32));
            assert!(matches!(stripe(&[SECRET], &sig, BODY, T, 300), Err(SigError::Malformed(_))), "t={t:?}");
        }
        let dup = format!("t={T},{}", sign_stripe(SECRET, T, BODY));
        assert!(matches!(stripe(&[SECRET], &dup, BODY, T, 300), Err(SigError::Malformed(_))));
    }

    #[test]
    fn stripe_bad_hex_is_ignored() {
        let good = sign_stripe(SECRET, T, BODY);
        let good_v1 = good.split_once(",v1=").expect("v1").1.to_owned();
        for bad in ["zz".repeat(32), "abc".into(), String::new(), format!("{good_v1}00"), good_v1[..62].to_owned()] {
            let only_bad = format!("t={T},v1={bad}");
            assert_eq!(stripe(&[SECRET], &only_bad, BODY, T, 300), Err(SigError::NoMatch), "{bad:?}");
            let bad_then_good = format!("t={T},v1={bad},v1={good_v1}");
            assert!(stripe(&[SECRET], &bad_then_good, BODY, T, 300).is_ok(), "{bad:?}");
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
        assert_eq!(stripe(&["whsec_old"], &sig, BODY, T, 300), Err(SigError::NoMatch));
        assert_eq!(stripe(&[], &sig, BODY, T, 300), Err(SigError::NoMatch));
    }

    #[test]
    fn empty_secret_never_matches() {
        let sig = sign_stripe("", T, BODY);
        assert_eq!(stripe(&[""], &sig, BODY, T, 300), Err(SigError::NoMatch));
        assert!(sign_standard("whsec_", SW_ID, SW_TS, SW_BODY).is_err());
        assert!(sign_standard("", SW_ID, SW_TS, SW_BODY).is_err());
    }

    const BLANK_SECRETS: [&str; 8] = ["", " ", "   ", "\t\r\n ", "\u{3000}\u{a0}", "whsec_", "whsec_  ", "whsec_\t"];

    #[test]
    fn blank_stripe_secrets_are_refused_and_never_verify() {
        for blank in BLANK_SECRETS {
            assert_eq!(check_secret(Provider::Stripe, blank), Err(SecretProblem::Blank), "{blank:?}");
            // A delivery signed with the blank key (anyone can make one) does not verify.
            let forged = sign_stripe(blank, T, BODY);
            assert_eq!(stripe(&[blank], &forged, BODY, T, 300), Err(SigError::NoMatch), "{blank:?}");
            // Stored next to a real secret, it neither verifies forgeries nor gets in the way.
            assert_eq!(stripe(&[blank, SECRET], &forged, BODY, T, 300), Err(SigError::NoMatch), "{blank:?}");
            let genuine = sign_stripe(SECRET, T, BODY);
            assert!(stripe(&[blank, SECRET], &genuine, BODY, T, 300).is_ok());
        }
        // NUL bytes sign as the empty key does.
        assert_eq!(check_secret(Provider::Stripe, "\0\0"), Err(SecretProblem::ZeroKey));
        let forged = sign_stripe("", T, BODY);
        assert_eq!(stripe(&["\0\0"], &forged, BODY, T, 300), Err(SigError::NoMatch));
    }

    #[test]
    fn usable_stripe_secrets_are_any_other_string() {
        // Stripe keys on the exact string: surrounding spaces are part of the key, and any
        // non-blank string is a key (only the provider's own secrets are worth anything).
        for secret in [SECRET, "x", " whsec_a ", "whsec_é", "not*base64!", "\0a"] {
            assert_eq!(check_secret(Provider::Stripe, secret), Ok(()), "{secret:?}");
            let sig = sign_stripe(secret, T, BODY);
            assert!(stripe(&[secret], &sig, BODY, T, 300).is_ok(), "{secret:?}");
        }
    }

    #[test]
    fn undecodable_standard_secrets_are_refused_and_never_verify() {
        for blank in BLANK_SECRETS {
            assert_eq!(check_secret(Provider::Standard, blank), Err(SecretProblem::Blank), "{blank:?}");
            assert!(sw(&[blank], SW_SIG, SW_TS).is_err(), "{blank:?}");
        }
        for bad in [
            "whsec_not*base64!",
            "not base64",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw ", // trailing space
            " whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", // the prefix is not stripped then
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaL",     // a length no base64 has
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw===",
            "whsec_MfKQ9r8G-YqrTwjUPD8ILPZIo2LaLaSw", // URL-safe alphabet
            "WHSEC_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "=",
        ] {
            assert_eq!(check_secret(Provider::Standard, bad), Err(SecretProblem::NotBase64), "{bad:?}");
            assert_eq!(sw(&[bad], SW_SIG, SW_TS), Err(SigError::NoMatch), "{bad:?}");
            assert!(sw(&[bad, SW_SECRET], SW_SIG, SW_TS).is_ok(), "{bad:?}");
            assert!(sign_standard(bad, SW_ID, SW_TS, SW_BODY).is_err(), "{bad:?}");
        }
        // Keys of zero bytes only: HMAC pads with zeros, so they sign as the empty key.
        let tag = |key: &[u8]| standard_mac(key, SW_ID, SW_TS, SW_BODY).expect("any key length").finalize().into_bytes();
        assert_eq!(tag(&[0; 3]), tag(b""));
        assert_eq!(tag(&[0; 24]), tag(b""));
        for zero in ["whsec_AA==", "whsec_AAAA", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"] {
            assert_eq!(check_secret(Provider::Standard, zero), Err(SecretProblem::ZeroKey), "{zero:?}");
            let mut mac = HmacSha256::new_from_slice(b"").expect("any key length");
            mac.update(format!("{SW_ID}.{SW_TS}.").as_bytes());
            mac.update(SW_BODY);
            let forged = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
            assert_eq!(sw(&[zero], &forged, SW_TS), Err(SigError::NoMatch), "{zero:?}");
        }
    }

    #[test]
    fn usable_standard_secrets_decode_as_the_verifier_decodes() {
        let key = b"0123456789abcdef0123"; // 20 bytes: base64 needs padding
        let padded = format!("whsec_{}", STANDARD.encode(key));
        let forms = [
            padded.clone(),
            padded.trim_end_matches('=').to_owned(),
            STANDARD.encode(key),
            STANDARD.encode(key).trim_end_matches('=').to_owned(),
            SW_SECRET.to_owned(),
            format!("whsec_{}", STANDARD.encode([0, 0, 1])),
        ];
        for secret in &forms {
            assert_eq!(check_secret(Provider::Standard, secret), Ok(()), "{secret:?}");
            assert!(sign_standard(secret, SW_ID, SW_TS, SW_BODY).is_ok(), "{secret:?}");
        }
        assert!(sw(&[SW_SECRET], SW_SIG, SW_TS).is_ok());
    }

    #[test]
    fn secret_problems_never_quote_the_secret() {
        for p in [SecretProblem::Blank, SecretProblem::NotBase64, SecretProblem::ZeroKey] {
            let msg = p.to_string();
            assert!(msg.starts_with("is "), "{msg}");
            assert!(!msg.contains("not*base64") && !msg.contains("AAAA"), "{msg}");
        }
        let e = sign_standard("whsec_not*base64!", SW_ID, SW_TS, SW_BODY).expect_err("refused");
        assert!(!e.to_string().contains("not*base64"), "{e}");
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
        assert_eq!(stripe(&[SECRET], &at_33, BODY, T, 300), Err(SigError::NoMatch));

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
        assert!(stripe(&[SECRET], &sig, BODY, T + tol, tol).is_ok(), "exactly tol in the past");
        assert!(stripe(&[SECRET], &sig, BODY, T - tol, tol).is_ok(), "exactly tol in the future");
        assert_eq!(stripe(&[SECRET], &sig, BODY, T + tol + 1, tol), Err(SigError::TooOld { ts: T, now: T + tol + 1, tolerance: tol }));
        assert_eq!(stripe(&[SECRET], &sig, BODY, T - tol - 1, tol), Err(SigError::TooNew { ts: T, now: T - tol - 1, tolerance: tol }));
        // Same rule for Standard Webhooks.
        assert!(sw(&[SW_SECRET], SW_SIG, SW_TS + 300).is_ok());
        assert!(sw(&[SW_SECRET], SW_SIG, SW_TS - 300).is_ok());
        assert!(matches!(sw(&[SW_SECRET], SW_SIG, SW_TS + 301), Err(SigError::TooOld { .. })));
        assert!(matches!(sw(&[SW_SECRET], SW_SIG, SW_TS - 301), Err(SigError::TooNew { .. })));
    }

    #[test]
    fn tolerance_zero_is_exact_and_negative_rejects_all() {
        let sig = sign_stripe(SECRET, T, BODY);
        assert!(stripe(&[SECRET], &sig, BODY, T, 0).is_ok());
        assert!(matches!(stripe(&[SECRET], &sig, BODY, T + 1, 0), Err(SigError::TooOld { .. })));
        assert!(matches!(stripe(&[SECRET], &sig, BODY, T - 1, 0), Err(SigError::TooNew { .. })));
        assert!(stripe(&[SECRET], &sig, BODY, T, -1).is_err());
    }

    #[test]
    fn extreme_clock_values_do_not_overflow() {
        let t = 999_999_999_999_999_999; // largest accepted timestamp
        let sig = sign_stripe(SECRET, t, BODY);
        assert!(matches!(stripe(&[SECRET], &sig, BODY, i64::MIN, i64::MAX), Err(SigError::TooNew { .. })));
        assert!(stripe(&[SECRET], &sig, BODY, t, i64::MAX).is_ok());
        let sig0 = sign_stripe(SECRET, 0, BODY);
        assert!(matches!(stripe(&[SECRET], &sig0, BODY, i64::MAX, 0), Err(SigError::TooOld { .. })));
        let e = SigError::TooOld { ts: i64::MIN, now: i64::MAX, tolerance: 0 };
        assert!(e.to_string().contains("18446744073709551615"));
    }

    #[test]
    fn forged_header_gets_no_match_not_timestamp_error() {
        // Signature is checked before the clock, so a forgery cannot probe the window.
        let forged = format!("t={},v1={}", T - DAY, "ab".repeat(32));
        assert_eq!(stripe(&[SECRET], &forged, BODY, T, 300), Err(SigError::NoMatch));
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
                Err(SigError::TooLarge { len: BODY.len(), max: BODY.len() - 1 })
            );
        }
        assert_eq!(calls.get(), 0, "no header was even looked up");
        // At the limit is fine.
        assert!(verify(Provider::Stripe, &[SECRET], &lookup, BODY, T, 300, BODY.len()).is_ok());
        assert_eq!(verify(Provider::Stripe, &[SECRET], &lookup, b"", T, 300, 0).map(|v| v.timestamp), Err(SigError::NoMatch));
    }

    // -- Standard Webhooks ---------------------------------------------------------------------

    #[test]
    fn standard_known_answer_and_webhook_id() {
        assert_eq!(sign_standard(SW_SECRET, SW_ID, SW_TS, SW_BODY).as_deref(), Ok(SW_SIG));
        assert_eq!(sw(&[SW_SECRET], SW_SIG, SW_TS), Ok(Verified { timestamp: SW_TS, webhook_id: Some(SW_ID.to_owned()) }));
    }

    #[test]
    fn standard_round_trip_and_tamper() {
        let secret = format!("whsec_{}", STANDARD.encode(b"0123456789abcdef0123456789abcdef"));
        let sig = sign_standard(&secret, "msg_1", T, BODY).expect("signs");
        let t = T.to_string();
        let ok = [("webhook-id", "msg_1"), ("webhook-timestamp", t.as_str()), ("webhook-signature", sig.as_str())];
        assert!(standard(&[&secret], &ok, BODY, T, 300).is_ok());
        assert_eq!(standard(&[&secret], &ok, b"{}", T, 300), Err(SigError::NoMatch));
        let other_id = [("webhook-id", "msg_2"), ("webhook-timestamp", t.as_str()), ("webhook-signature", sig.as_str())];
        assert_eq!(standard(&[&secret], &other_id, BODY, T, 300), Err(SigError::NoMatch));
        let t2 = (T + 1).to_string();
        let other_t = [("webhook-id", "msg_1"), ("webhook-timestamp", t2.as_str()), ("webhook-signature", sig.as_str())];
        assert_eq!(standard(&[&secret], &other_t, BODY, T, 300), Err(SigError::NoMatch));
    }

    #[test]
    fn standard_svix_header_names() {
        let ts = SW_TS.to_string();
        let svix = [("Svix-Id", SW_ID), ("Svix-Timestamp", ts.as_str()), ("Svix-Signature", SW_SIG)];
        assert_eq!(standard(&[SW_SECRET], &svix, SW_BODY, SW_TS, 300), Ok(Verified { timestamp: SW_TS, webhook_id: Some(SW_ID.to_owned()) }));
        // A lone svix-* header does not make a family: the complete webhook-* one is used.
        let both = [("webhook-id", SW_ID), ("svix-id", "msg_other"), ("webhook-timestamp", ts.as_str()), ("webhook-signature", SW_SIG)];
        assert!(standard(&[SW_SECRET], &both, SW_BODY, SW_TS, 300).is_ok());
    }

    /// Every header of the delivery under either family name: `true` picks `svix-*`.
    fn family_mix(svix: [bool; 3], id: &str, ts: &str, sig: &str) -> Vec<(String, String)> {
        let values = [id, ts, sig];
        (0..3)
            .map(|i| {
                let names = if svix[i] { SVIX_HEADERS } else { WEBHOOK_HEADERS };
                (names[i].to_owned(), values[i].to_owned())
            })
            .collect()
    }

    fn standard_owned(pairs: &[(String, String)]) -> Result<Verified, SigError> {
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        standard(&[SW_SECRET], &pairs, SW_BODY, SW_TS, 300)
    }

    #[test]
    fn standard_header_families_are_never_mixed() {
        let ts = SW_TS.to_string();
        let ok = Ok(Verified { timestamp: SW_TS, webhook_id: Some(SW_ID.to_owned()) });
        // Each family alone verifies.
        for family in [[false; 3], [true; 3]] {
            let pairs = family_mix(family, SW_ID, &ts, SW_SIG);
            assert_eq!(standard_owned(&pairs), ok, "{pairs:?}");
        }
        // Each of the six mixes carries a genuine id, timestamp and signature, and is refused
        // as missing a header of the family it used more of.
        for mix in 1..7u8 {
            let svix = [mix & 1 != 0, mix & 2 != 0, mix & 4 != 0];
            let pairs = family_mix(svix, SW_ID, &ts, SW_SIG);
            let more_svix = svix.iter().filter(|&&b| b).count() >= 2;
            let missing = (0..3).find(|&i| svix[i] != more_svix).expect("a mix");
            let name = if more_svix { SVIX_HEADERS[missing] } else { WEBHOOK_HEADERS[missing] };
            assert_eq!(standard_owned(&pairs), Err(SigError::Missing(name)), "{pairs:?}");
        }
        // webhook-id with svix-timestamp and svix-signature, as a sender might mix them.
        let mixed = [("webhook-id", SW_ID), ("svix-timestamp", ts.as_str()), ("svix-signature", SW_SIG)];
        assert_eq!(standard(&[SW_SECRET], &mixed, SW_BODY, SW_TS, 300), Err(SigError::Missing("svix-id")));
        // An empty or blank header is a missing one: it does not complete a family either.
        for blank in ["", "  "] {
            let pairs = [("svix-id", blank), ("svix-timestamp", ts.as_str()), ("svix-signature", SW_SIG), ("webhook-id", SW_ID)];
            assert_eq!(standard(&[SW_SECRET], &pairs, SW_BODY, SW_TS, 300), Err(SigError::Missing("svix-id")), "{blank:?}");
        }
    }

    #[test]
    fn standard_complete_svix_family_is_preferred() {
        let ts = SW_TS.to_string();
        let other_ts = (SW_TS + 1).to_string();
        let forged = format!("v1,{}", STANDARD.encode([1u8; 32]));
        let genuine = [("svix-id", SW_ID.to_owned()), ("svix-timestamp", ts.clone()), ("svix-signature", SW_SIG.to_owned())];
        let disagreeing = [("webhook-id", "msg_other".to_owned()), ("webhook-timestamp", other_ts.clone()), ("webhook-signature", forged.clone())];
        // Both complete, svix-* genuine: it is the one verified (its id comes back).
        let pairs: Vec<(String, String)> = genuine.iter().chain(&disagreeing).map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
        assert_eq!(standard_owned(&pairs), Ok(Verified { timestamp: SW_TS, webhook_id: Some(SW_ID.to_owned()) }));
        // Both complete, webhook-* genuine and svix-* not: svix-* is still the one used.
        let pairs: Vec<(String, String)> = [
            ("svix-id", "msg_other".to_owned()),
            ("svix-timestamp", other_ts),
            ("svix-signature", forged),
            ("webhook-id", SW_ID.to_owned()),
            ("webhook-timestamp", ts),
            ("webhook-signature", SW_SIG.to_owned()),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
        assert_eq!(standard_owned(&pairs), Err(SigError::NoMatch));
    }

    #[test]
    fn standard_missing_headers() {
        let ts = SW_TS.to_string();
        let full = [("webhook-id", SW_ID), ("webhook-timestamp", ts.as_str()), ("webhook-signature", SW_SIG)];
        for (skip, name) in [(0, "webhook-id"), (1, "webhook-timestamp"), (2, "webhook-signature")] {
            let pairs: Vec<(&str, &str)> = full.iter().enumerate().filter(|(i, _)| *i != skip).map(|(_, p)| *p).collect();
            assert_eq!(standard(&[SW_SECRET], &pairs, SW_BODY, SW_TS, 300), Err(SigError::Missing(name)));
        }
        assert_eq!(sw(&[SW_SECRET], "", SW_TS), Err(SigError::Missing("webhook-signature")));
    }

    #[test]
    fn standard_malformed_headers() {
        let bad_ts = [("webhook-id", SW_ID), ("webhook-timestamp", "16142653.30"), ("webhook-signature", SW_SIG)];
        assert!(matches!(standard(&[SW_SECRET], &bad_ts, SW_BODY, SW_TS, 300), Err(SigError::Malformed(_))));
        let ts = SW_TS.to_string();
        let dotted = [("webhook-id", "msg.1"), ("webhook-timestamp", ts.as_str()), ("webhook-signature", SW_SIG)];
        assert!(matches!(standard(&[SW_SECRET], &dotted, SW_BODY, SW_TS, 300), Err(SigError::Malformed(_))));
    }

    #[test]
    fn standard_v2_and_other_versions_ignored() {
        let payload = SW_SIG.trim_start_matches("v1,");
        // Correct bytes under another version label do not count.
        assert_eq!(sw(&[SW_SECRET], &format!("v2,{payload} v1a,{payload}"), SW_TS), Err(SigError::Missing("v1")));
        // Mixed list as in the libraries' multi-signature test.
        let mixed = format!("v2,{payload} v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v1,{payload}  v2,abc");
        assert!(sw(&[SW_SECRET], &mixed, SW_TS).is_ok());
    }

    #[test]
    fn standard_bad_signature_values_ignored() {
        for bad in ["v1,", "v1,!!!!", "v1,AAAA", "v1", ",", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=AAAA"] {
            let r = sw(&[SW_SECRET], bad, SW_TS);
            assert!(matches!(r, Err(SigError::NoMatch) | Err(SigError::Missing("v1"))), "{bad:?}: {r:?}");
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
        assert_eq!(sign_standard(&unpadded, SW_ID, SW_TS, SW_BODY).as_ref(), Ok(&sig));
        assert_eq!(sign_standard(&bare, SW_ID, SW_TS, SW_BODY).as_ref(), Ok(&sig));
        assert!(sw(&[&unpadded], &sig, SW_TS).is_ok());
    }

    #[test]
    fn standard_invalid_base64_secret_cannot_match() {
        let bad = "whsec_not*base64!";
        assert_eq!(sw(&[bad], SW_SIG, SW_TS), Err(SigError::NoMatch));
        // Rotation: the bad one is skipped, the second matches.
        assert!(sw(&[bad, SW_SECRET], SW_SIG, SW_TS).is_ok());
        assert!(matches!(sign_standard(bad, SW_ID, SW_TS, SW_BODY), Err(SigError::Malformed(_))));
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
                [("webhook-id", j.as_str()), ("webhook-timestamp", ts.as_str()), ("webhook-signature", SW_SIG)],
                [("webhook-id", "m"), ("webhook-timestamp", j.as_str()), ("webhook-signature", SW_SIG)],
                [("webhook-id", "m"), ("webhook-timestamp", ts.as_str()), ("webhook-signature", j.as_str())],
            ] {
                assert!(standard(&[SW_SECRET, j.as_str()], &pairs, BODY, T, 300).is_err(), "{j:?}");
            }
        }
    }

    #[test]
    fn errors_have_codes_and_no_secrets() {
        let cases = [
            (SigError::Missing("v1"), "invalid_signature"),
            (SigError::Malformed("x".into()), "invalid_signature"),
            (SigError::NoMatch, "invalid_signature"),
            (SigError::TooOld { ts: 1, now: 400, tolerance: 300 }, "timestamp_outside_tolerance"),
            (SigError::TooNew { ts: 400, now: 1, tolerance: 300 }, "timestamp_outside_tolerance"),
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
        assert!(SigError::TooOld { ts: 1, now: 400, tolerance: 300 }.to_string().contains("399s before"));
        // Real failures carry no secret material.
        let sig = sign_stripe(SECRET, T, BODY);
        for r in
            [stripe(&[SECRET], "t=x,v1=00", BODY, T, 300), stripe(&["whsec_other"], &sig, BODY, T, 300), sw(&["whsec_not*base64!"], SW_SIG, SW_TS)]
        {
            let msg = r.expect_err("fails").to_string();
            assert!(!msg.contains("whsec") && !msg.contains("secret_") && !msg.contains(&sig[13..]), "{msg}");
        }
    }
}
