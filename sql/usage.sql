-- billing: usage metering and rate limits (SPEC sections 3 and 4; src/usage/,
-- src/access/). Usage is rated at the price in force when it occurred and debited
-- exactly: what is not yet a whole credit is carried per customer and meter.

CREATE TABLE billing.meters (
    meter      text COLLATE "C" PRIMARY KEY CHECK (meter <> ''),
    created_at timestamptz      NOT NULL DEFAULT now()
);

-- A meter's price over time: usage is rated at the price in force when it occurred.
CREATE TABLE billing.meter_prices (
    meter          text COLLATE "C" NOT NULL REFERENCES billing.meters,
    effective_from timestamptz      NOT NULL,
    credits        bigint           NOT NULL CHECK (credits >= 0),
    per_units      bigint           NOT NULL CHECK (per_units > 0),
    PRIMARY KEY (meter, effective_from)
);

-- The fraction of a credit not yet charged, per customer and meter (num/den < 1). No
-- CHECK on what record_usage writes (see sql/ledger.sql): the fraction comes from the
-- rating (src/usage/rating.rs, exact and property-tested: 0 <= num < den), the quantity
-- is checked positive before any write, and verify() reports a row that breaks either.
CREATE TABLE billing.usage_carry (
    customer text COLLATE "C" NOT NULL,
    meter    text COLLATE "C" NOT NULL,
    num      bigint           NOT NULL,
    den      bigint           NOT NULL,
    PRIMARY KEY (customer, meter)
);

CREATE TABLE billing.usage_events (
    customer        text COLLATE "C" NOT NULL,
    idempotency_key text COLLATE "C" NOT NULL,
    meter           text COLLATE "C" NOT NULL,
    quantity        bigint           NOT NULL,     -- > 0
    occurred_at     timestamptz      NOT NULL,
    credits         bigint           NOT NULL,     -- >= 0
    entry_id        uuid,                      -- the debit or settle, when it charged credits
    reservation_id  uuid,
    recorded_at     timestamptz      NOT NULL,
    PRIMARY KEY (customer, idempotency_key)
);
CREATE INDEX usage_events_time ON billing.usage_events (customer, occurred_at);

-- Token buckets: `requests` per `per`, for a plan or a customer ('' = every feature).
CREATE TABLE billing.limits (
    subject  text COLLATE "C" NOT NULL CHECK (subject <> ''),
    feature  text COLLATE "C" NOT NULL DEFAULT '',
    requests int              NOT NULL CHECK (requests > 0),
    per      interval         NOT NULL CHECK (per > '0'::interval),
    PRIMARY KEY (subject, feature)
);

CREATE TABLE billing.buckets (
    customer text COLLATE "C" NOT NULL,
    feature  text COLLATE "C" NOT NULL,
    tokens   bigint           NOT NULL,   -- scaled by the limit's period in microseconds
    at       timestamptz      NOT NULL,
    PRIMARY KEY (customer, feature)
) WITH (fillfactor = 70);

SELECT pg_catalog.pg_extension_config_dump('billing.meters', '');
SELECT pg_catalog.pg_extension_config_dump('billing.meter_prices', '');
SELECT pg_catalog.pg_extension_config_dump('billing.usage_carry', '');
SELECT pg_catalog.pg_extension_config_dump('billing.usage_events', '');
SELECT pg_catalog.pg_extension_config_dump('billing.limits', '');
SELECT pg_catalog.pg_extension_config_dump('billing.buckets', '');

CREATE FUNCTION billing.define_meter(meter text, credits bigint, per_units bigint, effective_from timestamptz DEFAULT NULL)
RETURNS void VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_define_meter';
COMMENT ON FUNCTION billing.define_meter IS 'A meter and its price (credits per per_units), in force from effective_from (default now).';

CREATE FUNCTION billing.record_usage(customer text, meter text, quantity bigint, idempotency_key text,
    occurred_at timestamptz DEFAULT NULL, reservation_id uuid DEFAULT NULL,
    OUT entry_id uuid, OUT credits bigint, OUT balance_after bigint, OUT replayed boolean)
RETURNS record
VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_record_usage';
COMMENT ON FUNCTION billing.record_usage IS 'Rates usage at the price in force at occurred_at and debits it (or settles a hold), exactly, idempotently.';

-- A batch of usages (src/usage/batch.rs), as billing.debit_many is of debits.
CREATE FUNCTION billing.record_usage_many(customers text[], meters text[], quantities bigint[], idempotency_keys text[],
    occurred_at timestamptz[] DEFAULT NULL)
RETURNS TABLE (i int, entry_id uuid, credits bigint, balance_after bigint, replayed boolean, sqlstate text, message text)
VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_record_usage_many';
COMMENT ON FUNCTION billing.record_usage_many IS 'A batch of usages (at most 10,000), each as billing.record_usage; one row per item, a refused item with its sqlstate and message.';

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
