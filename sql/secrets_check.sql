-- billing 0.9.0: add_secret refuses secrets that cannot verify safely.
--
-- A blank Stripe secret (empty or whitespace after any whsec_ prefix) is an HMAC key anyone
-- can guess, so anyone could sign for the endpoint; a Standard Webhooks secret that does not
-- decode never verifies anything. add_secret now refuses both (22023, naming the endpoint,
-- never quoting the secret), by the rule the verifier skips such secrets by, those stored
-- before this release included: one Rust function, signature::check_secret
-- (src/webhook/signature.rs), reached from SQL through billing._check_secret.
CREATE FUNCTION billing._check_secret(endpoint text, provider text, secret text)
RETURNS void IMMUTABLE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_check_secret';
COMMENT ON FUNCTION billing._check_secret IS 'Raises 22023 unless the secret can verify deliveries for the provider (add_secret''s check; the verifier skips secrets it refuses).';
REVOKE ALL ON FUNCTION billing._check_secret(text, text, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION billing.add_secret(name text, secret text)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p text;
BEGIN
    IF name IS NULL THEN RAISE EXCEPTION 'endpoint name must not be NULL' USING ERRCODE = '22023'; END IF;
    IF secret IS NULL OR secret = '' THEN RAISE EXCEPTION 'secret must not be empty (endpoint "%")', name USING ERRCODE = '22023'; END IF;
    SELECT e.provider INTO p FROM billing.endpoints e WHERE e.name = add_secret.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown webhook endpoint "%"', name USING ERRCODE = 'BL013';
    END IF;
    PERFORM billing._check_secret(name, p, secret);
    INSERT INTO billing.endpoint_secrets (endpoint, secret) VALUES (name, secret) ON CONFLICT DO NOTHING;
END $$;
-- CREATE OR REPLACE keeps add_secret's privileges (sql/privileges_webhook.sql: none for
-- PUBLIC, EXECUTE for billing_admin); restated so this file says what it relies on.
REVOKE ALL ON FUNCTION billing.add_secret(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION billing.add_secret(text, text) TO billing_admin;
