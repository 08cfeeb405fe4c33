//! `#[pg_test]`s of `billing.add_secret`'s refusal of secrets that cannot verify safely
//! (sql/webhooks.sql), and of the verifier skipping such secrets stored before it.
#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::test_sql::{prepare, q, state};
    use crate::webhook::signature::{sign_standard, sign_stripe};
    use pgrx::prelude::*;
    use serde_json::json;

    const T0: i64 = 1_900_000_000; // 2030-03-17
    const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn setup() {
        prepare("2030-03-17 17:46:40+00"); // T0
        Spi::run(
            "CREATE FUNCTION pg_temp.error_of(q text) RETURNS text LANGUAGE plpgsql AS $$
             BEGIN EXECUTE q; RETURN 'ok'; EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$;
             SELECT billing.add_endpoint('s', 'stripe'), billing.add_endpoint('sw', 'standard')",
        )
        .unwrap();
    }

    /// A SQL string literal of `s`.
    fn lit(s: &str) -> String {
        format!("'{}'", s.replace('\'', "''"))
    }

    /// `add_secret(endpoint, secret)`'s SQLSTATE and message, or "ok".
    fn add(endpoint: &str, secret: &str) -> String {
        let sql = format!("SELECT billing.add_secret({}, {})", lit(endpoint), lit(secret));
        Spi::get_one_with_args::<String>("SELECT pg_temp.error_of($1)", &[sql.into()]).unwrap().unwrap()
    }

    fn stored(endpoint: &str) -> i64 {
        q(&format!("SELECT count(*) FROM billing.endpoint_secrets WHERE endpoint = {}", lit(endpoint)))
    }

    /// Refused with 22023, by a message that names the endpoint and does not quote the
    /// secret, and nothing stored.
    fn assert_refused(endpoint: &str, secret: &str) {
        let before = stored(endpoint);
        let e = add(endpoint, secret);
        assert!(e.starts_with("22023: "), "{endpoint} {secret:?}: {e}");
        assert!(e.contains(&format!("endpoint \"{endpoint}\"")), "{e}");
        let quoted = secret.trim().trim_start_matches("whsec_").trim();
        assert!(quoted.is_empty() || !e.contains(quoted), "{e}");
        assert_eq!(stored(endpoint), before, "{endpoint} {secret:?} stored");
    }

    fn assert_accepted(endpoint: &str, secret: &str) {
        assert_eq!(add(endpoint, secret), "ok", "{endpoint} {secret:?}");
        let n: i64 = q(&format!("SELECT count(*) FROM billing.endpoint_secrets WHERE endpoint = {} AND secret = {}", lit(endpoint), lit(secret)));
        assert_eq!(n, 1, "{endpoint} {secret:?}");
    }

    const BLANK: [&str; 7] = [" ", "   ", "\t", " \r\n ", "\u{3000}", "whsec_", "whsec_  "];

    #[pg_test]
    fn add_secret_refuses_blank_stripe_secrets() {
        setup();
        for s in BLANK {
            assert_refused("s", s);
        }
        assert_eq!(stored("s"), 0);
        // The checks there were keep their codes and order.
        assert_eq!(state("SELECT billing.add_secret('s', '')"), "22023");
        assert_eq!(state("SELECT billing.add_secret('s', NULL)"), "22023");
        assert_eq!(state("SELECT billing.add_secret(NULL, 'whsec_a')"), "22023");
        assert_eq!(state("SELECT billing.add_secret('nope', 'whsec_a')"), "BL013");
        assert_eq!(state("SELECT billing.add_secret('nope', ' ')"), "BL013");
    }

    #[pg_test]
    fn add_secret_refuses_standard_secrets_that_do_not_decode() {
        setup();
        for s in BLANK {
            assert_refused("sw", s);
        }
        for s in [
            "whsec_not*base64!",
            "plain text secret",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw ",
            " whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaL",
            "whsec_MfKQ9r8G-YqrTwjUPD8ILPZIo2LaLaSw",
            "WHSEC_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_AAAA", // a key of zero bytes signs as the empty key
        ] {
            assert_refused("sw", s);
        }
        assert_eq!(stored("sw"), 0);
        // The message says why, with the endpoint's name.
        let e = add("sw", "whsec_not*base64!");
        assert!(e.contains("secret for webhook endpoint \"sw\" refused: it is not base64"), "{e}");
        let e = add("s", " ");
        assert!(e.contains("secret for webhook endpoint \"s\" refused: it is blank"), "{e}");
    }

    #[pg_test]
    fn add_secret_accepts_good_secrets_and_they_verify() {
        setup();
        // Stripe: any string that is not blank, byte for byte (spaces around it included).
        for s in ["whsec_pgtest", "x", " whsec_spaced ", "not*base64!"] {
            assert_accepted("s", s);
        }
        // Standard Webhooks: prefixed or not, padded or not, as the verifier decodes them.
        let key = b"0123456789abcdef0123"; // 20 bytes: base64 needs padding
        let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, key);
        let forms = [SW_SECRET.to_owned(), format!("whsec_{b64}"), format!("whsec_{}", b64.trim_end_matches('=')), b64.clone()];
        for s in &forms {
            assert_accepted("sw", s);
        }
        assert_eq!(add("sw", SW_SECRET), "ok", "adding a secret twice is still a no-op");
        assert_eq!(stored("s"), 4);
        assert_eq!(stored("sw"), 4);

        // What was accepted verifies, through ingest.
        let body = json!({"id": "evt_spaced", "object": "event", "type": "customer.updated", "created": T0,
                          "livemode": false, "data": {"object": {"id": "cus_x"}}})
        .to_string();
        let h = json!({"Stripe-Signature": sign_stripe(" whsec_spaced ", T0, body.as_bytes())}).to_string();
        assert_eq!(state(&format!("SELECT billing.ingest('s', {}::jsonb, {})", lit(&h), lit(&body))), "ok");
        let body = r#"{"type": "invoice.paid", "data": {}}"#;
        let sig = sign_standard(&forms[3], "msg_bare", T0, body.as_bytes()).unwrap();
        let h = json!({"webhook-id": "msg_bare", "webhook-timestamp": T0.to_string(), "webhook-signature": sig}).to_string();
        assert_eq!(state(&format!("SELECT billing.ingest('sw', {}::jsonb, {})", lit(&h), lit(body))), "ok");
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.events"), 2);
    }

    /// Secrets stored before add_secret refused them (written straight into the table here)
    /// never verify a delivery, and do not stop the endpoint's good secrets from verifying.
    #[pg_test]
    fn verifier_skips_blank_and_undecodable_secrets_already_stored() {
        setup();
        Spi::run(
            "INSERT INTO billing.endpoint_secrets (endpoint, secret)
             VALUES ('s', ' '), ('s', 'whsec_'), ('sw', '  '), ('sw', 'whsec_AAAA'), ('sw', 'whsec_not*base64!')",
        )
        .unwrap();
        let body = json!({"id": "evt_forged", "object": "event", "type": "customer.updated", "created": T0,
                          "livemode": false, "data": {"object": {"id": "cus_x"}}})
        .to_string();
        for blank in [" ", "whsec_"] {
            let h = json!({"Stripe-Signature": sign_stripe(blank, T0, body.as_bytes())}).to_string();
            assert_eq!(state(&format!("SELECT billing.ingest('s', {}::jsonb, {})", lit(&h), lit(&body))), "BL010", "{blank:?}");
            let ok: bool = q(&format!(
                "SELECT billing.verify_signature('stripe', ARRAY[{}], {}::jsonb, {}, to_timestamp({T0}))",
                lit(blank),
                lit(&h),
                lit(&body)
            ));
            assert!(!ok, "{blank:?}");
        }
        // A delivery signed with the empty key (what a zero-byte key signs as) is refused.
        let sw_body = r#"{"type": "invoice.paid", "data": {}}"#;
        let forged = {
            use hmac::Mac;
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"").unwrap();
            mac.update(format!("msg_forged.{T0}.{sw_body}").as_bytes());
            format!("v1,{}", base64::Engine::encode(&base64::engine::general_purpose::STANDARD, mac.finalize().into_bytes()))
        };
        let h = json!({"webhook-id": "msg_forged", "webhook-timestamp": T0.to_string(), "webhook-signature": forged}).to_string();
        assert_eq!(state(&format!("SELECT billing.ingest('sw', {}::jsonb, {})", lit(&h), lit(sw_body))), "BL010");
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.events"), 0);

        // Good secrets next to them still verify.
        Spi::run("SELECT billing.add_secret('s', 'whsec_good')").unwrap();
        let h = json!({"Stripe-Signature": sign_stripe("whsec_good", T0, body.as_bytes())}).to_string();
        assert_eq!(state(&format!("SELECT billing.ingest('s', {}::jsonb, {})", lit(&h), lit(&body))), "ok");
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.events"), 1);
    }

    #[pg_test]
    fn check_secret_is_internal() {
        setup();
        let public: bool = q("SELECT has_function_privilege('public', 'billing._check_secret(text, text, text)', 'EXECUTE')");
        assert!(!public);
        let admin: bool = q("SELECT has_function_privilege('billing_admin', 'billing.add_secret(text, text)', 'EXECUTE')");
        assert!(admin);
        let admin_direct: bool = q("SELECT has_function_privilege('billing_admin', 'billing._check_secret(text, text, text)', 'EXECUTE')");
        assert!(!admin_direct);
        assert_eq!(state("SELECT billing._check_secret('e', 'stripe', 'whsec_a')"), "ok");
        assert_eq!(state("SELECT billing._check_secret('e', 'paypal', 'whsec_a')"), "22023");
        assert_eq!(state("SELECT billing._check_secret('e', 'stripe', NULL)"), "22023");
        assert_eq!(state("SELECT billing._check_secret(NULL, 'stripe', 'whsec_a')"), "22023");
        assert_eq!(state("SELECT billing._check_secret('e', 'standard', 'whsec_!')"), "22023");
    }
}
