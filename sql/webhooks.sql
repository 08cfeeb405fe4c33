-- billing: webhook ingestion (SPEC section 2): endpoints and their secrets, every event
-- once, the provider objects the events describe, what was bought, refunded and disputed,
-- and the functions that take deliveries in (src/webhook/). Subscriptions and their
-- periods, which the events also maintain, are in sql/plans.sql.

CREATE TABLE billing.endpoints (
    name       text COLLATE "C" PRIMARY KEY CHECK (name <> ''),
    provider   text COLLATE "C" NOT NULL CHECK (provider IN ('stripe', 'standard')),
    created_at timestamptz      NOT NULL DEFAULT now()
);

-- Readable by the extension owner alone: no role is granted anything on it.
CREATE TABLE billing.endpoint_secrets (
    endpoint   text COLLATE "C" NOT NULL REFERENCES billing.endpoints ON DELETE CASCADE,
    secret     text COLLATE "C" NOT NULL CHECK (secret <> ''),
    added_at   timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (endpoint, secret)
);

-- Every verified event, once, with what the receiver sent. A row stays whole up to 3 KB
-- (toast_tuple_target), its body compressed when the row is longer: Stripe's bodies compress
-- to 1-2.5 KB, and ~0.6 KB of other columns made most rows pass the default 2 KB, which
-- sends the body to the TOAST table (a second heap insert and an index insert per ingest,
-- two more relations locked). A row that is under 3 KB whole is kept uncompressed.
CREATE TABLE billing.events (
    provider          text COLLATE "C" NOT NULL,
    event_id          text COLLATE "C" NOT NULL,
    endpoint          text COLLATE "C" NOT NULL,
    type              text COLLATE "C" NOT NULL,
    created           timestamptz,
    api_version       text COLLATE "C",
    object_id         text COLLATE "C",
    customer          text COLLATE "C",     -- the application's customer, once known
    provider_customer text COLLATE "C",     -- cus_..., when the event named one
    body              text             NOT NULL,
    headers           jsonb            NOT NULL,
    received_at       timestamptz      NOT NULL,
    status            text COLLATE "C" NOT NULL,  -- applied, stale, ignored, failed (no CHECK: see sql/ledger.sql)
    detail            text,                 -- the error of a failed apply, or what was done
    attempts          int              NOT NULL DEFAULT 1,
    deliveries        int              NOT NULL DEFAULT 1,
    last_delivery_at  timestamptz      NOT NULL,
    applied_at        timestamptz,
    -- How the event was first stored: 'delivery' (a signed webhook) or 'fetch' (from the
    -- provider's API, billing.ingest_fetched). Whichever comes second is a duplicate.
    via               text COLLATE "C" NOT NULL DEFAULT 'delivery',
    PRIMARY KEY (provider, event_id)
) WITH (toast_tuple_target = 3072);
CREATE INDEX events_failed ON billing.events (provider_customer, created, event_id) WHERE status = 'failed';
CREATE INDEX events_failed_app ON billing.events (customer, created, event_id) WHERE status = 'failed';

-- The same event id delivered with a different body (one event rendered in two API
-- versions): a duplicate, kept as evidence.
CREATE TABLE billing.event_variants (
    provider    text COLLATE "C" NOT NULL,
    event_id    text COLLATE "C" NOT NULL,
    received_at timestamptz      NOT NULL,
    body        text             NOT NULL,
    headers     jsonb            NOT NULL,
    PRIMARY KEY (provider, event_id, received_at)
);

-- Raw bodies compressed with lz4 where the server has it: a Stripe body (~3 KB) is
-- compressed as the events row is written, and pglz made that insert the most expensive
-- statement of an ingest: ~110 us, against ~67 us with lz4 (pg_stat_statements, 1,800
-- inserts each); lz4 also reads back faster for replays. A column's COMPRESSION clause
-- would fail on a server built without lz4, which keeps pglz.
DO $$
BEGIN
    IF 'lz4' = ANY ((SELECT s.enumvals FROM pg_catalog.pg_settings s WHERE s.name = 'default_toast_compression')::text[]) THEN
        ALTER TABLE billing.events ALTER COLUMN body SET COMPRESSION lz4, ALTER COLUMN headers SET COMPRESSION lz4;
        ALTER TABLE billing.event_variants ALTER COLUMN body SET COMPRESSION lz4, ALTER COLUMN headers SET COMPRESSION lz4;
    END IF;
END $$;

-- The insert-only path for receivers: a row inserted here is verified, stored in
-- billing.events and applied by the trigger, and not kept here (RETURN NULL).
CREATE TABLE billing.inbox (
    endpoint    text COLLATE "C" NOT NULL,
    headers     jsonb            NOT NULL,
    body        text             NOT NULL,
    received_at timestamptz      NOT NULL DEFAULT now()
);

-- Provider customers (cus_...) of the application's customers. Keyed (and, on Citus,
-- distributed) by the provider's id, which is what a webhook knows: no foreign key to
-- customers, which live elsewhere on a cluster; the link writes the customer row first.
CREATE TABLE billing.provider_customers (
    provider          text COLLATE "C" NOT NULL,
    provider_customer text COLLATE "C" NOT NULL,
    customer          text COLLATE "C" NOT NULL,
    linked_at         timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, provider_customer)
);

-- The last event applied to each provider object: (created, event id) only moves forward.
CREATE TABLE billing.provider_objects (
    provider    text COLLATE "C" NOT NULL,
    object_id   text COLLATE "C" NOT NULL,
    created     bigint           NOT NULL,
    event_id    text COLLATE "C" NOT NULL,
    PRIMARY KEY (provider, object_id)
);

-- Credits bought: one row per payment (PaymentIntent, else Checkout Session), so the
-- session's and the intent's events grant once, and refunds revoke in proportion. Keyed
-- (and distributed) by the payment, which is what makes the grant happen once: the two
-- events of one payment meet here whichever customer each names.
CREATE TABLE billing.purchases (
    customer        text COLLATE "C" NOT NULL,
    provider        text COLLATE "C" NOT NULL,
    purchase_id     text COLLATE "C" NOT NULL,
    credits         bigint           NOT NULL CHECK (credits > 0),
    amount          bigint,
    currency        text COLLATE "C",
    grant_id        uuid             NOT NULL,
    refunded_amount bigint           NOT NULL DEFAULT 0,
    revoked_credits bigint           NOT NULL DEFAULT 0,
    created_at      timestamptz      NOT NULL,
    PRIMARY KEY (provider, purchase_id)
);

-- A payment's refunds, beside it (keyed by the payment first, as purchases are).
CREATE TABLE billing.refunds (
    provider    text COLLATE "C" NOT NULL,
    refund_id   text COLLATE "C" NOT NULL,
    purchase_id text COLLATE "C" NOT NULL,
    amount      bigint           NOT NULL,
    counts      boolean          NOT NULL,
    PRIMARY KEY (provider, purchase_id, refund_id)
);

-- A customer's disputes: the customer is frozen while any is open.
CREATE TABLE billing.disputes (
    provider    text COLLATE "C" NOT NULL,
    dispute_id  text COLLATE "C" NOT NULL,
    customer    text COLLATE "C" NOT NULL REFERENCES billing.customers,
    status      text COLLATE "C" NOT NULL,
    open        boolean          NOT NULL,
    updated_at  timestamptz      NOT NULL,
    PRIMARY KEY (customer, provider, dispute_id)
);

-- DBA-configured credits for top-ups without metadata.credits: by price id, or by
-- '<currency>:<amount>' (e.g. 'usd:1000').
CREATE TABLE billing.topup_credits (
    match   text COLLATE "C" PRIMARY KEY CHECK (match <> ''),
    credits bigint           NOT NULL CHECK (credits > 0)
);

SELECT pg_catalog.pg_extension_config_dump('billing.endpoints', '');
SELECT pg_catalog.pg_extension_config_dump('billing.endpoint_secrets', '');
SELECT pg_catalog.pg_extension_config_dump('billing.events', '');
SELECT pg_catalog.pg_extension_config_dump('billing.event_variants', '');
SELECT pg_catalog.pg_extension_config_dump('billing.provider_customers', '');
SELECT pg_catalog.pg_extension_config_dump('billing.provider_objects', '');
SELECT pg_catalog.pg_extension_config_dump('billing.purchases', '');
SELECT pg_catalog.pg_extension_config_dump('billing.refunds', '');
SELECT pg_catalog.pg_extension_config_dump('billing.disputes', '');
SELECT pg_catalog.pg_extension_config_dump('billing.topup_credits', '');

CREATE FUNCTION billing.verify_signature(provider text, secrets text[], headers jsonb, body text, at timestamptz DEFAULT now())
RETURNS boolean STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_verify_signature';
COMMENT ON FUNCTION billing.verify_signature IS 'Whether a delivery is authentic under any of the secrets, within the tolerance at the given instant.';

CREATE FUNCTION billing.ingest(endpoint text, headers jsonb, body text,
    OUT event_id text, OUT status text, OUT detail text)
RETURNS record
VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_ingest';
COMMENT ON FUNCTION billing.ingest IS 'Verifies, stores once and applies a webhook delivery; BL010-BL014 store nothing.';

CREATE FUNCTION billing._inbox_ingest() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off AS $$
BEGIN
    PERFORM billing.ingest(NEW.endpoint, NEW.headers, NEW.body);
    RETURN NULL;  -- stored in billing.events, not here
END $$;
CREATE TRIGGER inbox_ingest BEFORE INSERT ON billing.inbox
    FOR EACH ROW EXECUTE FUNCTION billing._inbox_ingest();

-- Reconciliation: Stripe keeps events 30 days and stops retrying a failing endpoint after
-- 3: what was never delivered is fetched (GET /v1/events, scripts/stripe-sync.py) and
-- handed to billing.ingest_fetched, which stores and applies it exactly as a delivery,
-- unsigned. Hence its own role, billing_sync (sql/roles.sql): a webhook receiver
-- (billing_webhook) or the application (billing_app) must not be able to make up an event.
CREATE FUNCTION billing.ingest_fetched(endpoint text, body text,
    OUT event_id text, OUT status text, OUT detail text)
RETURNS record VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_ingest_fetched';
COMMENT ON FUNCTION billing.ingest_fetched IS 'Stores once and applies a Stripe event fetched from the provider''s API (unsigned): as a delivery would, a duplicate of one.';

CREATE FUNCTION billing.replay(provider text, event_id text,
    OUT event_id text, OUT status text, OUT detail text)
RETURNS record
VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_replay';
COMMENT ON FUNCTION billing.replay(text, text) IS 'Applies a stored event again (failed ones; applied ones are left alone).';

CREATE FUNCTION billing.replay(event_id text,
    OUT event_id text, OUT status text, OUT detail text)
RETURNS record
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off AS
$$ SELECT r.* FROM billing.replay('stripe', $1) r $$;

CREATE FUNCTION billing.replay_failed()
RETURNS TABLE (event_id text, status text, detail text)
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT r.* FROM (SELECT e.provider, e.event_id FROM billing.events e WHERE e.status = 'failed'
                      ORDER BY e.created, e.event_id) f,
           LATERAL billing.replay(f.provider, f.event_id) r
$$;
COMMENT ON FUNCTION billing.replay_failed IS 'Applies every failed event again, in provider order.';

CREATE FUNCTION billing.add_endpoint(name text, provider text)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF name IS NULL OR name = '' THEN RAISE EXCEPTION 'endpoint name must not be empty' USING ERRCODE = '22023'; END IF;
    IF provider IS NULL OR provider NOT IN ('stripe', 'standard') THEN
        RAISE EXCEPTION 'unknown webhook provider % for endpoint "%" (stripe or standard)', provider, name USING ERRCODE = '22023';
    END IF;
    INSERT INTO billing.endpoints (name, provider) VALUES (name, provider)
    ON CONFLICT ON CONSTRAINT endpoints_pkey DO UPDATE SET provider = EXCLUDED.provider;
END $$;

-- add_secret refuses secrets that cannot verify safely: a blank Stripe secret (empty or
-- whitespace after any whsec_ prefix) is an HMAC key anyone can guess, so anyone could
-- sign for the endpoint; a Standard Webhooks secret that does not decode never verifies
-- anything. It refuses both (22023, naming the endpoint, never quoting the secret) by the
-- rule the verifier skips such secrets by, those stored earlier included: one Rust
-- function, signature::check_secret (src/webhook/signature.rs), reached from SQL through
-- billing._check_secret. NULL arguments are invalid (22023), not unknown endpoints.
CREATE FUNCTION billing._check_secret(endpoint text, provider text, secret text)
RETURNS void IMMUTABLE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_check_secret';
COMMENT ON FUNCTION billing._check_secret IS 'Raises 22023 unless the secret can verify deliveries for the provider (add_secret''s check; the verifier skips secrets it refuses).';

CREATE FUNCTION billing.add_secret(name text, secret text)
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

CREATE FUNCTION billing.remove_secret(name text, secret text)
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF name IS NULL OR secret IS NULL THEN
        RAISE EXCEPTION 'endpoint name and secret must not be NULL' USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT FROM billing.endpoints e WHERE e.name = remove_secret.name) THEN
        RAISE EXCEPTION 'unknown webhook endpoint "%"', name USING ERRCODE = 'BL013';
    END IF;
    DELETE FROM billing.endpoint_secrets s WHERE s.endpoint = name AND s.secret = remove_secret.secret;
    RETURN FOUND;
END $$;

CREATE FUNCTION billing.link_customer(customer text, provider_customer_id text, provider text DEFAULT 'stripe')
RETURNS TABLE (event_id text, status text, detail text)
VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_link_customer';
COMMENT ON FUNCTION billing.link_customer IS 'Maps a provider customer (cus_...) to the application''s customer and applies its waiting events in provider order.';

CREATE FUNCTION billing.define_topup(match text, credits bigint)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF match IS NULL OR match = '' THEN RAISE EXCEPTION 'match must be a price id or <currency>:<amount>' USING ERRCODE = '22023'; END IF;
    IF credits IS NULL OR credits <= 0 THEN RAISE EXCEPTION 'credits for "%" must be positive', match USING ERRCODE = '22023'; END IF;
    INSERT INTO billing.topup_credits AS t (match, credits) VALUES (lower(match), credits)
    ON CONFLICT ON CONSTRAINT topup_credits_pkey DO UPDATE SET credits = EXCLUDED.credits;
END $$;
COMMENT ON FUNCTION billing.define_topup IS 'Credits for a top-up without metadata.credits: by price id, or by ''usd:1000'' (currency:amount).';

-- Operator views of the events.
CREATE VIEW billing.failed_events AS
SELECT provider, event_id, type, created, received_at, provider_customer, customer, detail, attempts
  FROM billing.events WHERE status = 'failed';
CREATE VIEW billing.stale_events AS
SELECT provider, event_id, type, created, received_at, object_id, detail
  FROM billing.events WHERE status = 'stale';
CREATE VIEW billing.event_lag AS
SELECT e.endpoint, count(*) AS events,
       max(e.received_at - e.created) AS max_lag,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM e.received_at - e.created)) AS median_lag_seconds,
       count(*) FILTER (WHERE e.status = 'failed') AS failed
  FROM billing.events e
 WHERE e.received_at > now() - interval '1 day' AND e.created IS NOT NULL
 GROUP BY e.endpoint;
-- How far the sync from the provider's API got, per endpoint: the newest event a fetch
-- handed in, stored before or not. The sync tool starts its next run there (minus a
-- margin), not at the newest event stored: while deliveries flow, that is about now, and
-- an outage whose events the provider stopped retrying would never be looked at.
CREATE TABLE billing.sync_marks (
    endpoint       text COLLATE "C" PRIMARY KEY REFERENCES billing.endpoints ON DELETE CASCADE,
    synced_through timestamptz      NOT NULL,
    updated_at     timestamptz      NOT NULL
);
SELECT pg_catalog.pg_extension_config_dump('billing.sync_marks', '');

-- (Joins, not correlated subqueries: Citus plans these over events distributed by id.)
CREATE VIEW billing.sync_status AS
SELECT e.name AS endpoint, e.provider, v.newest_delivered, v.newest_fetched,
       coalesce(v.delivered, 0) AS delivered, coalesce(v.fetched, 0) AS fetched, m.synced_through
  FROM billing.endpoints e
  LEFT JOIN (SELECT x.endpoint,
                    max(x.created) FILTER (WHERE x.via = 'delivery') AS newest_delivered,
                    max(x.created) FILTER (WHERE x.via = 'fetch') AS newest_fetched,
                    count(*) FILTER (WHERE x.via = 'delivery') AS delivered,
                    count(*) FILTER (WHERE x.via = 'fetch') AS fetched
               FROM billing.events x GROUP BY x.endpoint) v ON v.endpoint = e.name
  LEFT JOIN billing.sync_marks m ON m.endpoint = e.name;
COMMENT ON VIEW billing.sync_status IS 'Per endpoint: the newest event stored from deliveries and from fetches, how many each path brought, and how far the sync from the provider''s API got.';
