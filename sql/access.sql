-- billing 0.3.0: access checks, usage metering, rate limits, the outbox and auto top-up
-- (SPEC sections 3-5).

-- Low-balance and auto-top-up thresholds live on the customer row the ledger locks
-- anyway, so noticing a crossing costs no extra read on the debit path.
ALTER TABLE billing.customers
    ADD COLUMN low_balance    bigint,
    ADD COLUMN low_notified   boolean NOT NULL DEFAULT false,
    ADD COLUMN topup_below    bigint,
    ADD COLUMN topup_notified boolean NOT NULL DEFAULT false,
    ADD COLUMN access_reason  text;

CREATE TABLE billing.meters (
    meter      text        PRIMARY KEY CHECK (meter <> ''),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- A meter's price over time: usage is rated at the price in force when it occurred.
CREATE TABLE billing.meter_prices (
    meter          text        NOT NULL REFERENCES billing.meters,
    effective_from timestamptz NOT NULL,
    credits        bigint      NOT NULL CHECK (credits >= 0),
    per_units      bigint      NOT NULL CHECK (per_units > 0),
    PRIMARY KEY (meter, effective_from)
);

-- The fraction of a credit not yet charged, per customer and meter (num/den < 1).
CREATE TABLE billing.usage_carry (
    customer text   NOT NULL,
    meter    text   NOT NULL,
    num      bigint NOT NULL CHECK (num >= 0),
    den      bigint NOT NULL CHECK (den > 0 AND num < den),
    PRIMARY KEY (customer, meter)
);

CREATE TABLE billing.usage_events (
    customer        text        NOT NULL,
    idempotency_key text        NOT NULL,
    meter           text        NOT NULL,
    quantity        bigint      NOT NULL CHECK (quantity > 0),
    occurred_at     timestamptz NOT NULL,
    credits         bigint      NOT NULL CHECK (credits >= 0),
    entry_id        uuid,                 -- the debit or settle, when it charged credits
    reservation_id  uuid,
    recorded_at     timestamptz NOT NULL,
    PRIMARY KEY (customer, idempotency_key)
);
CREATE INDEX usage_events_time ON billing.usage_events (customer, occurred_at);

-- Token buckets: `requests` per `per`, for a plan or a customer ('' = every feature).
CREATE TABLE billing.limits (
    subject  text     NOT NULL CHECK (subject <> ''),
    feature  text     NOT NULL DEFAULT '',
    requests int      NOT NULL CHECK (requests > 0),
    per      interval NOT NULL CHECK (per > '0'::interval),
    PRIMARY KEY (subject, feature)
);

CREATE TABLE billing.buckets (
    customer text        NOT NULL,
    feature  text        NOT NULL,
    tokens   bigint      NOT NULL,   -- scaled by the limit's period in microseconds
    at       timestamptz NOT NULL,
    PRIMARY KEY (customer, feature)
) WITH (fillfactor = 70);

CREATE TABLE billing.auto_topups (
    customer     text   PRIMARY KEY REFERENCES billing.customers,
    threshold    bigint NOT NULL,
    amount       bigint NOT NULL CHECK (amount > 0),
    monthly_cap  int    NOT NULL CHECK (monthly_cap >= 0),
    max_failures int    NOT NULL CHECK (max_failures >= 0),
    month        text   NOT NULL DEFAULT '',
    this_month   int    NOT NULL DEFAULT 0,
    failures     int    NOT NULL DEFAULT 0
);

-- The transactional outbox: rows written in the same transaction as the change that
-- causes them; NOTIFY billing on commit. Consumers claim with billing.claim_outbox(n)
-- (a lease, FOR UPDATE SKIP LOCKED) and acknowledge with billing.ack_outbox(id).
CREATE TABLE billing.outbox (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer        text,
    kind            text        NOT NULL CHECK (kind IN ('low_balance', 'subscription_status', 'access_changed', 'event_failed', 'topup_due')),
    payload         jsonb       NOT NULL DEFAULT '{}',
    idempotency_key text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    claimed_until   timestamptz,
    attempts        int         NOT NULL DEFAULT 0,
    acked_at        timestamptz
);
CREATE INDEX outbox_pending ON billing.outbox (id) WHERE acked_at IS NULL;

CREATE FUNCTION billing._outbox_notify() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_catalog.pg_notify('billing', '');
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_notify AFTER INSERT ON billing.outbox
    FOR EACH STATEMENT EXECUTE FUNCTION billing._outbox_notify();

-- A subscription's status change reaches the application through the outbox.
CREATE FUNCTION billing._subscription_outbox() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'INSERT' OR OLD.status IS DISTINCT FROM NEW.status THEN
        INSERT INTO billing.outbox (customer, kind, payload)
        VALUES (NEW.customer, 'subscription_status', pg_catalog.jsonb_build_object(
            'subscription', NEW.subscription_id, 'plan', NEW.plan,
            'from', CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END, 'to', NEW.status));
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER subscription_outbox AFTER INSERT OR UPDATE OF status ON billing.subscriptions
    FOR EACH ROW EXECUTE FUNCTION billing._subscription_outbox();

SELECT pg_catalog.pg_extension_config_dump('billing.meters', '');
SELECT pg_catalog.pg_extension_config_dump('billing.meter_prices', '');
SELECT pg_catalog.pg_extension_config_dump('billing.usage_carry', '');
SELECT pg_catalog.pg_extension_config_dump('billing.usage_events', '');
SELECT pg_catalog.pg_extension_config_dump('billing.limits', '');
SELECT pg_catalog.pg_extension_config_dump('billing.buckets', '');
SELECT pg_catalog.pg_extension_config_dump('billing.auto_topups', '');
SELECT pg_catalog.pg_extension_config_dump('billing.outbox', '');

CREATE FUNCTION billing.access(customer text, feature text DEFAULT NULL)
RETURNS TABLE (allowed boolean, reason text, plan text, status text, balance bigint, period_end timestamptz)
STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp ROWS 1
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_access';
COMMENT ON FUNCTION billing.access IS 'Whether the customer may use the product (or a feature) now, and why: active, trialing, grace, past_due, canceled, frozen, no_plan, no_feature, no_credits.';

CREATE FUNCTION billing.can_access(customer text, feature text DEFAULT NULL)
RETURNS boolean STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_can_access';
COMMENT ON FUNCTION billing.can_access IS 'allowed of billing.access; cheap enough for row-level-security policies.';

CREATE FUNCTION billing.charge(customer text, feature text, amount bigint, idempotency_key text)
RETURNS TABLE (entry_id uuid, balance_after bigint, replayed boolean)
VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp ROWS 1
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_charge';
COMMENT ON FUNCTION billing.charge IS 'Access check, rate limit and debit in one call; denies with the reason''s SQLSTATE.';

CREATE FUNCTION billing.define_meter(meter text, credits bigint, per_units bigint, effective_from timestamptz DEFAULT NULL)
RETURNS void VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_define_meter';
COMMENT ON FUNCTION billing.define_meter IS 'A meter and its price (credits per per_units), in force from effective_from (default now).';

CREATE FUNCTION billing.record_usage(customer text, meter text, quantity bigint, idempotency_key text,
    occurred_at timestamptz DEFAULT NULL, reservation_id uuid DEFAULT NULL)
RETURNS TABLE (entry_id uuid, credits bigint, balance_after bigint, replayed boolean)
VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp ROWS 1
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_record_usage';
COMMENT ON FUNCTION billing.record_usage IS 'Rates usage at the price in force at occurred_at and debits it (or settles a hold), exactly, idempotently.';

CREATE FUNCTION billing.usage(customer text, "from" timestamptz, "to" timestamptz)
RETURNS TABLE (meter text, quantity bigint, credits bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT u.meter, sum(u.quantity)::bigint, sum(u.credits)::bigint
      FROM billing.usage_events u
     WHERE u.customer = $1 AND u.occurred_at >= $2 AND u.occurred_at < $3
     GROUP BY u.meter ORDER BY u.meter
$$;
COMMENT ON FUNCTION billing.usage IS 'Quantity and credits per meter in [from, to).';

CREATE FUNCTION billing.define_limit(subject text, feature text, requests int, per interval)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF subject IS NULL OR subject = '' THEN RAISE EXCEPTION 'subject must be a plan or a customer' USING ERRCODE = '22023'; END IF;
    IF requests IS NULL OR requests <= 0 THEN RAISE EXCEPTION 'requests of the limit for "%" must be positive', subject USING ERRCODE = '22023'; END IF;
    IF per IS NULL OR per <= '0'::interval OR per > '31 days'::interval THEN
        RAISE EXCEPTION 'per of the limit for "%" must be between 0 and 31 days', subject USING ERRCODE = '22023';
    END IF;
    INSERT INTO billing.limits AS l (subject, feature, requests, per) VALUES (subject, coalesce(feature, ''), requests, per)
    ON CONFLICT ON CONSTRAINT limits_pkey DO UPDATE SET requests = EXCLUDED.requests, per = EXCLUDED.per;
END $$;
COMMENT ON FUNCTION billing.define_limit IS 'A token-bucket rate limit (requests per interval) for a plan or a customer; feature NULL = every request.';

CREATE FUNCTION billing.set_low_balance(customer text, threshold bigint)
RETURNS void VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_set_low_balance';
COMMENT ON FUNCTION billing.set_low_balance IS 'An outbox row (low_balance) each time the balance crosses below the threshold; NULL turns it off.';

CREATE FUNCTION billing.set_auto_topup(customer text, threshold bigint, amount bigint, monthly_cap int, max_failures int)
RETURNS void VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_set_auto_topup';
COMMENT ON FUNCTION billing.set_auto_topup IS 'A topup_due outbox row, with a deterministic idempotency key, when the balance crosses below the threshold.';

CREATE FUNCTION billing.report_topup(customer text, idempotency_key text, succeeded boolean)
RETURNS void VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_report_topup';
COMMENT ON FUNCTION billing.report_topup IS 'What the provider call of a topup_due row did; a failure asks again until max_failures.';

CREATE FUNCTION billing.claim_outbox(n int DEFAULT 100, lease interval DEFAULT '1 minute')
RETURNS SETOF billing.outbox LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    UPDATE billing.outbox o SET claimed_until = pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) $2,
                                attempts = o.attempts OPERATOR(pg_catalog.+) 1
     WHERE o.id IN (SELECT p.id FROM billing.outbox p
                     WHERE p.acked_at IS NULL
                       AND (p.claimed_until IS NULL OR p.claimed_until OPERATOR(pg_catalog.<) pg_catalog.clock_timestamp())
                     ORDER BY p.id LIMIT $1 FOR UPDATE SKIP LOCKED)
    RETURNING o.*
$$;
COMMENT ON FUNCTION billing.claim_outbox IS 'Claims up to n unacknowledged rows for a lease; rows claimed by others are skipped, not waited for.';

CREATE FUNCTION billing.ack_outbox(id bigint)
RETURNS boolean LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    UPDATE billing.outbox o SET acked_at = pg_catalog.clock_timestamp()
     WHERE o.id OPERATOR(pg_catalog.=) $1 AND o.acked_at IS NULL
    RETURNING true
$$;
COMMENT ON FUNCTION billing.ack_outbox IS 'Marks a row done; false if it was already acknowledged.';

-- Operator views.
CREATE VIEW billing.event_lag AS
SELECT e.endpoint, count(*) AS events,
       max(e.received_at - e.created) AS max_lag,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM e.received_at - e.created)) AS median_lag_seconds,
       count(*) FILTER (WHERE e.status = 'failed') AS failed
  FROM billing.events e
 WHERE e.received_at > now() - interval '1 day' AND e.created IS NOT NULL
 GROUP BY e.endpoint;
CREATE VIEW billing.low_balances AS
SELECT c.customer, c.balance, c.low_balance AS threshold
  FROM billing.customers c WHERE c.low_balance IS NOT NULL AND c.balance < c.low_balance;
CREATE VIEW billing.open_holds AS
SELECT r.customer, r.id AS reservation_id, r.amount, r.created_at, r.expires_at
  FROM billing.reservations r WHERE r.status = 'active';
