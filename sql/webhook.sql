-- billing: webhook ingestion (SPEC section 2) and the subscription state it maintains.

CREATE TABLE billing.endpoints (
    name       text        PRIMARY KEY CHECK (name <> ''),
    provider   text        NOT NULL CHECK (provider IN ('stripe', 'standard')),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Readable by the extension owner alone: no role is granted anything on it.
CREATE TABLE billing.endpoint_secrets (
    endpoint   text        NOT NULL REFERENCES billing.endpoints ON DELETE CASCADE,
    secret     text        NOT NULL CHECK (secret <> ''),
    added_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (endpoint, secret)
);

-- Every verified event, once, with what the receiver sent.
CREATE TABLE billing.events (
    provider          text        NOT NULL,
    event_id          text        NOT NULL,
    endpoint          text        NOT NULL,
    type              text        NOT NULL,
    created           timestamptz,
    api_version       text,
    object_id         text,
    customer          text,            -- the application's customer, once known
    provider_customer text,            -- cus_..., when the event named one
    body              text        NOT NULL,
    headers           jsonb       NOT NULL,
    received_at       timestamptz NOT NULL,
    status            text        NOT NULL CHECK (status IN ('applied', 'stale', 'ignored', 'failed')),
    detail            text,            -- the error of a failed apply, or what was done
    attempts          int         NOT NULL DEFAULT 1,
    deliveries        int         NOT NULL DEFAULT 1,
    last_delivery_at  timestamptz NOT NULL,
    applied_at        timestamptz,
    PRIMARY KEY (provider, event_id)
);
CREATE INDEX events_failed ON billing.events (provider_customer, created, event_id) WHERE status = 'failed';
CREATE INDEX events_failed_app ON billing.events (customer, created, event_id) WHERE status = 'failed';

-- The same event id delivered with a different body (one event rendered in two API
-- versions): a duplicate, kept as evidence.
CREATE TABLE billing.event_variants (
    provider    text        NOT NULL,
    event_id    text        NOT NULL,
    received_at timestamptz NOT NULL,
    body        text        NOT NULL,
    headers     jsonb       NOT NULL,
    PRIMARY KEY (provider, event_id, received_at)
);

-- The insert-only path for receivers: a row inserted here is verified, stored in
-- billing.events and applied by the trigger, and not kept here (RETURN NULL).
CREATE TABLE billing.inbox (
    endpoint    text        NOT NULL,
    headers     jsonb       NOT NULL,
    body        text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);

-- Provider customers (cus_...) of the application's customers.
CREATE TABLE billing.provider_customers (
    provider          text        NOT NULL,
    provider_customer text        NOT NULL,
    customer          text        NOT NULL REFERENCES billing.customers,
    linked_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, provider_customer)
);

-- The last event applied to each provider object: (created, event id) only moves forward.
CREATE TABLE billing.provider_objects (
    provider    text   NOT NULL,
    object_id   text   NOT NULL,
    created     bigint NOT NULL,
    event_id    text   NOT NULL,
    PRIMARY KEY (provider, object_id)
);

CREATE TABLE billing.plans (
    plan           text     PRIMARY KEY CHECK (plan <> ''),
    features       text[]   NOT NULL DEFAULT '{}',
    period_credits bigint   NOT NULL DEFAULT 0 CHECK (period_credits >= 0),
    grace          interval NOT NULL DEFAULT '3 days',
    provider_price text     UNIQUE
);

CREATE TABLE billing.subscriptions (
    customer             text        NOT NULL REFERENCES billing.customers,
    provider             text        NOT NULL,
    subscription_id      text        NOT NULL,
    status               text        NOT NULL,
    plan                 text,
    price_id             text,
    current_period_end   timestamptz,
    cancel_at_period_end boolean     NOT NULL DEFAULT false,
    trial_end            timestamptz,
    paid_through         timestamptz,           -- latest period end of a paid invoice
    status_created       bigint      NOT NULL,  -- (created, event) of the status' source
    status_event         text        NOT NULL,
    updated_at           timestamptz NOT NULL,
    PRIMARY KEY (customer, subscription_id)
);
CREATE UNIQUE INDEX subscriptions_provider_id ON billing.subscriptions (provider, subscription_id);

-- Credits bought: one row per payment (PaymentIntent, else Checkout Session), so the
-- session's and the intent's events grant once, and refunds revoke in proportion.
CREATE TABLE billing.purchases (
    customer        text        NOT NULL REFERENCES billing.customers,
    provider        text        NOT NULL,
    purchase_id     text        NOT NULL,
    credits         bigint      NOT NULL CHECK (credits > 0),
    amount          bigint,
    currency        text,
    grant_id        uuid        NOT NULL,
    refunded_amount bigint      NOT NULL DEFAULT 0,
    revoked_credits bigint      NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (customer, purchase_id)
);
CREATE UNIQUE INDEX purchases_provider_id ON billing.purchases (provider, purchase_id);

CREATE TABLE billing.refunds (
    provider    text   NOT NULL,
    refund_id   text   NOT NULL,
    purchase_id text   NOT NULL,
    amount      bigint NOT NULL,
    counts      boolean NOT NULL,
    PRIMARY KEY (provider, refund_id)
);

CREATE TABLE billing.disputes (
    provider    text        NOT NULL,
    dispute_id  text        NOT NULL,
    customer    text        NOT NULL REFERENCES billing.customers,
    status      text        NOT NULL,
    open        boolean     NOT NULL,
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (provider, dispute_id)
);

-- DBA-configured credits for top-ups without metadata.credits: by price id, or by
-- '<currency>:<amount>' (e.g. 'usd:1000').
CREATE TABLE billing.topup_credits (
    match   text   PRIMARY KEY CHECK (match <> ''),
    credits bigint NOT NULL CHECK (credits > 0)
);

SELECT pg_catalog.pg_extension_config_dump('billing.endpoints', '');
SELECT pg_catalog.pg_extension_config_dump('billing.endpoint_secrets', '');
SELECT pg_catalog.pg_extension_config_dump('billing.events', '');
SELECT pg_catalog.pg_extension_config_dump('billing.event_variants', '');
SELECT pg_catalog.pg_extension_config_dump('billing.provider_customers', '');
SELECT pg_catalog.pg_extension_config_dump('billing.provider_objects', '');
SELECT pg_catalog.pg_extension_config_dump('billing.plans', '');
SELECT pg_catalog.pg_extension_config_dump('billing.subscriptions', '');
SELECT pg_catalog.pg_extension_config_dump('billing.purchases', '');
SELECT pg_catalog.pg_extension_config_dump('billing.refunds', '');
SELECT pg_catalog.pg_extension_config_dump('billing.disputes', '');
SELECT pg_catalog.pg_extension_config_dump('billing.topup_credits', '');

CREATE FUNCTION billing.verify_signature(provider text, secrets text[], headers jsonb, body text, at timestamptz DEFAULT now())
RETURNS boolean STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_verify_signature';
COMMENT ON FUNCTION billing.verify_signature IS 'Whether a delivery is authentic under any of the secrets, within the tolerance at the given instant.';

CREATE FUNCTION billing.ingest(endpoint text, headers jsonb, body text)
RETURNS TABLE (event_id text, status text, detail text)
VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp ROWS 1
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_ingest';
COMMENT ON FUNCTION billing.ingest IS 'Verifies, stores once and applies a webhook delivery; BL010-BL014 store nothing.';

CREATE FUNCTION billing._inbox_ingest() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM billing.ingest(NEW.endpoint, NEW.headers, NEW.body);
    RETURN NULL;  -- stored in billing.events, not here
END $$;
CREATE TRIGGER inbox_ingest BEFORE INSERT ON billing.inbox
    FOR EACH ROW EXECUTE FUNCTION billing._inbox_ingest();

CREATE FUNCTION billing.replay(provider text, event_id text)
RETURNS TABLE (event_id text, status text, detail text)
VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp ROWS 1
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_replay';
COMMENT ON FUNCTION billing.replay(text, text) IS 'Applies a stored event again (failed ones; applied ones are left alone).';

CREATE FUNCTION billing.replay(event_id text)
RETURNS TABLE (event_id text, status text, detail text)
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS
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

CREATE FUNCTION billing.add_secret(name text, secret text)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF secret IS NULL OR secret = '' THEN RAISE EXCEPTION 'secret must not be empty (endpoint "%")', name USING ERRCODE = '22023'; END IF;
    IF NOT EXISTS (SELECT FROM billing.endpoints e WHERE e.name = add_secret.name) THEN
        RAISE EXCEPTION 'unknown webhook endpoint "%"', name USING ERRCODE = 'BL013';
    END IF;
    INSERT INTO billing.endpoint_secrets (endpoint, secret) VALUES (name, secret) ON CONFLICT DO NOTHING;
END $$;

CREATE FUNCTION billing.remove_secret(name text, secret text)
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM billing.endpoints e WHERE e.name = remove_secret.name) THEN
        RAISE EXCEPTION 'unknown webhook endpoint "%"', name USING ERRCODE = 'BL013';
    END IF;
    DELETE FROM billing.endpoint_secrets s WHERE s.endpoint = name AND s.secret = remove_secret.secret;
    RETURN FOUND;
END $$;

CREATE FUNCTION billing.link_customer(customer text, provider_customer_id text, provider text DEFAULT 'stripe')
RETURNS TABLE (event_id text, status text, detail text)
VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_link_customer';
COMMENT ON FUNCTION billing.link_customer IS 'Maps a provider customer (cus_...) to the application''s customer and applies its waiting events in provider order.';

CREATE FUNCTION billing.define_plan(plan text, features text[], period_credits bigint DEFAULT 0,
    grace interval DEFAULT '3 days', provider_price text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF plan IS NULL OR plan = '' THEN RAISE EXCEPTION 'plan name must not be empty' USING ERRCODE = '22023'; END IF;
    IF period_credits IS NULL OR period_credits < 0 THEN
        RAISE EXCEPTION 'period_credits of plan "%" must be zero or positive', plan USING ERRCODE = '22023';
    END IF;
    IF grace IS NULL OR grace < '0'::interval THEN RAISE EXCEPTION 'grace of plan "%" must not be negative', plan USING ERRCODE = '22023'; END IF;
    INSERT INTO billing.plans AS p (plan, features, period_credits, grace, provider_price)
    VALUES (plan, coalesce(features, '{}'), period_credits, grace, provider_price)
    ON CONFLICT ON CONSTRAINT plans_pkey DO UPDATE
       SET features = EXCLUDED.features, period_credits = EXCLUDED.period_credits,
           grace = EXCLUDED.grace, provider_price = EXCLUDED.provider_price;
END $$;

CREATE FUNCTION billing.define_topup(match text, credits bigint)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF match IS NULL OR match = '' THEN RAISE EXCEPTION 'match must be a price id or <currency>:<amount>' USING ERRCODE = '22023'; END IF;
    IF credits IS NULL OR credits <= 0 THEN RAISE EXCEPTION 'credits for "%" must be positive', match USING ERRCODE = '22023'; END IF;
    INSERT INTO billing.topup_credits AS t (match, credits) VALUES (lower(match), credits)
    ON CONFLICT ON CONSTRAINT topup_credits_pkey DO UPDATE SET credits = EXCLUDED.credits;
END $$;
COMMENT ON FUNCTION billing.define_topup IS 'Credits for a top-up without metadata.credits: by price id, or by ''usd:1000'' (currency:amount).';

-- Operator views.
CREATE VIEW billing.failed_events AS
SELECT provider, event_id, type, created, received_at, provider_customer, customer, detail, attempts
  FROM billing.events WHERE status = 'failed';
CREATE VIEW billing.stale_events AS
SELECT provider, event_id, type, created, received_at, object_id, detail
  FROM billing.events WHERE status = 'stale';
