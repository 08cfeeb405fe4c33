-- The peers billing is compared with, on the same data in the same cluster (bench/run.sh).
--
--  floor_*   the floor: the same writes as plain SQL with no logic (a conditional UPDATE of
--            one balance row + a journal INSERT + a key INSERT in one transaction). The
--            pgbench scripts send it as one statement with data-modifying CTEs (one round
--            trip, like a call to the extension). No idempotency check, no provenance, no
--            error paths: a lower bound, not a usable ledger.
--  floor_fn  the floor's debit statement, unchanged, inside a function declared as the
--            contract declares the extension's (SECURITY DEFINER, pinned search_path): what
--            being a function costs, before any logic (a PL/pgSQL function runs its
--            statement through SPI with a kept plan, as the extension does).
--  pl_*      what a user would write instead: straightforward PL/pgSQL with an idempotency
--            key and a journal on a single balance row per customer, locked first
--            (SELECT ... FOR UPDATE), so it is correct under concurrency; ids from
--            gen_random_uuid() (PostgreSQL 15 has no uuidv7). A PL/pgSQL webhook ingest
--            that checks the Stripe HMAC with pgcrypto, dedupes with ON CONFLICT and applies
--            top-ups and subscription snapshots with a high-water mark.
CREATE EXTENSION IF NOT EXISTS pgcrypto;
CREATE SCHEMA peer;

-- ---- the floor ----
CREATE TABLE peer.floor_accounts (
    id      text   PRIMARY KEY,
    balance bigint NOT NULL,
    seq     bigint NOT NULL DEFAULT 0
) WITH (fillfactor = 50);
CREATE TABLE peer.floor_journal (
    customer      text        NOT NULL,
    seq           bigint      NOT NULL,
    at            timestamptz NOT NULL DEFAULT now(),
    kind          text        NOT NULL,
    amount        bigint      NOT NULL,
    balance_after bigint      NOT NULL,
    PRIMARY KEY (customer, seq)
);
CREATE TABLE peer.floor_keys (
    customer text   NOT NULL,
    key      text   NOT NULL,
    seq      bigint NOT NULL,
    PRIMARY KEY (customer, key)
);
CREATE TABLE peer.floor_holds (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer text   NOT NULL,
    amount   bigint NOT NULL,
    settled  bigint
) WITH (fillfactor = 70);
CREATE TABLE peer.floor_usage (
    customer text   NOT NULL,
    key      text   NOT NULL,
    meter    text   NOT NULL,
    quantity bigint NOT NULL,
    credits  bigint NOT NULL,
    seq      bigint NOT NULL,
    PRIMARY KEY (customer, key)
);
CREATE TABLE peer.floor_events (
    event_id    text        PRIMARY KEY,
    headers     jsonb       NOT NULL,
    body        text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION peer.floor_fn(p_id text, p_amount bigint, p_key text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE v_seq bigint;
BEGIN
    WITH u AS (UPDATE peer.floor_accounts SET balance = balance - p_amount, seq = seq + 1
                WHERE id = p_id AND balance >= p_amount RETURNING id, seq, balance),
         j AS (INSERT INTO peer.floor_journal (customer, seq, kind, amount, balance_after)
               SELECT id, seq, 'debit', -p_amount, balance FROM u)
    INSERT INTO peer.floor_keys (customer, key, seq) SELECT id, p_key, seq FROM u RETURNING seq INTO v_seq;
    RETURN v_seq;
END $$;

-- ---- PL/pgSQL: the ledger ----
CREATE TABLE peer.pl_accounts (
    id      text    PRIMARY KEY,
    balance bigint  NOT NULL DEFAULT 0,
    seq     bigint  NOT NULL DEFAULT 0,
    frozen  boolean NOT NULL DEFAULT false
) WITH (fillfactor = 50);
CREATE TABLE peer.pl_journal (
    customer        text        NOT NULL,
    seq             bigint      NOT NULL,
    entry_id        uuid        NOT NULL UNIQUE,
    at              timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind            text        NOT NULL,
    amount          bigint      NOT NULL,
    balance_after   bigint      NOT NULL,
    idempotency_key text,
    hold_id         uuid,
    PRIMARY KEY (customer, seq),
    UNIQUE (customer, idempotency_key)
);
CREATE TABLE peer.pl_holds (
    id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    customer   text        NOT NULL,
    amount     bigint      NOT NULL,
    status     text        NOT NULL DEFAULT 'active',
    settled    bigint,
    expires_at timestamptz NOT NULL
) WITH (fillfactor = 70);
CREATE TABLE peer.pl_meter_prices (
    meter          text        NOT NULL,
    effective_from timestamptz NOT NULL,
    credits        bigint      NOT NULL,
    per_units      bigint      NOT NULL,
    PRIMARY KEY (meter, effective_from)
);
CREATE TABLE peer.pl_usage_carry (
    customer text   NOT NULL,
    meter    text   NOT NULL,
    num      bigint NOT NULL,
    PRIMARY KEY (customer, meter)
);
CREATE TABLE peer.pl_usage_events (
    customer        text        NOT NULL,
    idempotency_key text        NOT NULL,
    meter           text        NOT NULL,
    quantity        bigint      NOT NULL,
    credits         bigint      NOT NULL,
    entry_id        uuid,
    recorded_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (customer, idempotency_key)
);

-- Journal entry of a balance change on a row the caller has locked.
CREATE FUNCTION peer.pl_post(p_customer text, p_kind text, p_amount bigint, p_key text, p_hold uuid,
                             OUT entry_id uuid, OUT balance_after bigint)
LANGUAGE plpgsql AS $$
DECLARE v_seq bigint;
BEGIN
    UPDATE peer.pl_accounts a SET balance = a.balance + p_amount, seq = a.seq + 1
     WHERE a.id = p_customer RETURNING a.balance, a.seq INTO balance_after, v_seq;
    entry_id := gen_random_uuid();
    INSERT INTO peer.pl_journal (customer, seq, entry_id, kind, amount, balance_after, idempotency_key, hold_id)
    VALUES (p_customer, v_seq, entry_id, p_kind, p_amount, balance_after, p_key, p_hold);
END $$;

CREATE FUNCTION peer.pl_debit(p_customer text, p_amount bigint, p_key text,
                              OUT entry_id uuid, OUT balance_after bigint, OUT replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE v_balance bigint; v_frozen boolean; v_amount bigint; v_seq bigint;
BEGIN
    IF p_amount IS NULL OR p_amount <= 0 OR p_key IS NULL OR p_key = '' THEN
        RAISE EXCEPTION 'invalid argument' USING ERRCODE = '22023';
    END IF;
    SELECT a.balance, a.frozen INTO v_balance, v_frozen FROM peer.pl_accounts a WHERE a.id = p_customer FOR UPDATE;
    IF NOT FOUND THEN RAISE EXCEPTION 'unknown customer %', p_customer USING ERRCODE = 'P0003'; END IF;
    SELECT j.entry_id, j.balance_after, -j.amount INTO entry_id, balance_after, v_amount
      FROM peer.pl_journal j WHERE j.customer = p_customer AND j.idempotency_key = p_key;
    IF FOUND THEN
        IF v_amount <> p_amount OR v_amount IS NULL THEN
            RAISE EXCEPTION 'key % reused with different arguments', p_key USING ERRCODE = 'P0002';
        END IF;
        replayed := true;
        RETURN;
    END IF;
    IF v_frozen THEN RAISE EXCEPTION 'customer % frozen', p_customer USING ERRCODE = 'P0004'; END IF;
    IF v_balance < p_amount THEN RAISE EXCEPTION 'insufficient credits' USING ERRCODE = 'P0001'; END IF;
    UPDATE peer.pl_accounts a SET balance = a.balance - p_amount, seq = a.seq + 1
     WHERE a.id = p_customer RETURNING a.balance, a.seq INTO balance_after, v_seq;
    entry_id := gen_random_uuid();
    INSERT INTO peer.pl_journal (customer, seq, entry_id, kind, amount, balance_after, idempotency_key)
    VALUES (p_customer, v_seq, entry_id, 'debit', -p_amount, balance_after, p_key);
    replayed := false;
END $$;

-- A batch of debits, as billing.debit_many answers it: one row per item, a refused item
-- with its SQLSTATE and message, not undoing the others (so each item runs in an
-- EXCEPTION block: a subtransaction, the only way PL/pgSQL catches an error); the
-- batch's accounts are locked first in one order (by id), so batches never deadlock.
CREATE FUNCTION peer.pl_debit_many(p_customers text[], p_amounts bigint[], p_keys text[])
RETURNS TABLE (i int, entry_id uuid, balance_after bigint, replayed boolean, sqlstate text, message text)
LANGUAGE plpgsql AS $$
DECLARE n int := cardinality(p_customers); d record;
BEGIN
    IF n IS NULL OR n <> cardinality(p_amounts) OR n <> cardinality(p_keys) OR n > 10000 THEN
        RAISE EXCEPTION 'arrays of different lengths, or over 10,000 items' USING ERRCODE = '22023';
    END IF;
    PERFORM FROM peer.pl_accounts a WHERE a.id = ANY(p_customers) ORDER BY a.id FOR UPDATE;
    FOR j IN 1..n LOOP
        i := j; entry_id := NULL; balance_after := NULL; replayed := NULL; sqlstate := NULL; message := NULL;
        BEGIN
            SELECT * INTO d FROM peer.pl_debit(p_customers[j], p_amounts[j], p_keys[j]);
            entry_id := d.entry_id; balance_after := d.balance_after; replayed := d.replayed;
        EXCEPTION WHEN OTHERS THEN
            pl_debit_many.sqlstate := SQLSTATE; message := SQLERRM;  -- (the handler's SQLSTATE shadows the column)
        END;
        RETURN NEXT;
    END LOOP;
END $$;

CREATE FUNCTION peer.pl_reserve(p_customer text, p_amount bigint, p_key text, p_ttl interval DEFAULT '15 minutes')
RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE v_balance bigint; v_frozen boolean; v_hold uuid;
BEGIN
    IF p_amount IS NULL OR p_amount <= 0 OR p_key IS NULL OR p_key = '' THEN
        RAISE EXCEPTION 'invalid argument' USING ERRCODE = '22023';
    END IF;
    SELECT a.balance, a.frozen INTO v_balance, v_frozen FROM peer.pl_accounts a WHERE a.id = p_customer FOR UPDATE;
    IF NOT FOUND THEN RAISE EXCEPTION 'unknown customer %', p_customer USING ERRCODE = 'P0003'; END IF;
    SELECT j.hold_id INTO v_hold FROM peer.pl_journal j WHERE j.customer = p_customer AND j.idempotency_key = p_key;
    IF FOUND THEN RETURN v_hold; END IF;
    IF v_frozen THEN RAISE EXCEPTION 'customer % frozen', p_customer USING ERRCODE = 'P0004'; END IF;
    IF v_balance < p_amount THEN RAISE EXCEPTION 'insufficient credits' USING ERRCODE = 'P0001'; END IF;
    INSERT INTO peer.pl_holds (customer, amount, expires_at) VALUES (p_customer, p_amount, clock_timestamp() + p_ttl)
    RETURNING id INTO v_hold;
    PERFORM peer.pl_post(p_customer, 'hold', -p_amount, p_key, v_hold);
    RETURN v_hold;
END $$;

CREATE FUNCTION peer.pl_settle(p_hold uuid, p_actual bigint,
                               OUT entry_id uuid, OUT balance_after bigint, OUT replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE h peer.pl_holds; v_balance bigint;
BEGIN
    SELECT * INTO h FROM peer.pl_holds WHERE id = p_hold;
    IF NOT FOUND THEN RAISE EXCEPTION 'unknown hold %', p_hold USING ERRCODE = 'P0003'; END IF;
    SELECT a.balance INTO v_balance FROM peer.pl_accounts a WHERE a.id = h.customer FOR UPDATE;
    SELECT * INTO h FROM peer.pl_holds WHERE id = p_hold FOR UPDATE;
    IF h.status = 'settled' AND h.settled = p_actual THEN
        SELECT j.entry_id, j.balance_after INTO entry_id, balance_after
          FROM peer.pl_journal j WHERE j.customer = h.customer AND j.idempotency_key = 'settle:' || p_hold;
        replayed := true;
        RETURN;
    END IF;
    IF h.status <> 'active' OR h.expires_at <= clock_timestamp() THEN
        RAISE EXCEPTION 'hold % is not active', p_hold USING ERRCODE = 'P0005';
    END IF;
    IF p_actual IS NULL OR p_actual < 0 OR p_actual - h.amount > v_balance THEN
        RAISE EXCEPTION 'invalid or insufficient' USING ERRCODE = 'P0001';
    END IF;
    UPDATE peer.pl_holds SET status = 'settled', settled = p_actual WHERE id = p_hold;
    SELECT p.entry_id, p.balance_after INTO entry_id, balance_after
      FROM peer.pl_post(h.customer, 'settle', h.amount - p_actual, 'settle:' || p_hold, p_hold) p;
    replayed := false;
END $$;

-- Rate limits per customer (or every customer, '*') and meter (or every meter, '*'), and
-- their token buckets: what billing.define_limit sets and record_usage enforces.
CREATE TABLE peer.pl_limits (
    subject  text     NOT NULL,
    feature  text     NOT NULL,
    requests int      NOT NULL,
    per      interval NOT NULL,
    PRIMARY KEY (subject, feature)
);
CREATE TABLE peer.pl_buckets (
    customer text        NOT NULL,
    feature  text        NOT NULL,
    tokens   float8      NOT NULL,
    at       timestamptz NOT NULL,
    PRIMARY KEY (customer, feature)
);

-- Exact rating with a carried remainder (credits per per_units), then a debit; access
-- (a subscription that allows, else credits) and the meter's rate limit checked first,
-- as billing.record_usage checks them (SPEC: limits are enforced by charge and
-- record_usage; usage is refused without access). (0.9.0: the peer skipped both, so it
-- did less than record_usage; issue 21 asks for an honest peer.)
CREATE FUNCTION peer.pl_record_usage(p_customer text, p_meter text, p_quantity bigint, p_key text,
                                     OUT entry_id uuid, OUT credits bigint, OUT balance_after bigint, OUT replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE v_balance bigint; v_frozen boolean; v_credits bigint; v_per bigint; v_num bigint; v_total bigint;
        v_status text; v_end timestamptz; v_requests int; v_every interval; v_tokens float8;
BEGIN
    IF p_quantity IS NULL OR p_quantity <= 0 OR p_key IS NULL OR p_key = '' THEN
        RAISE EXCEPTION 'invalid argument' USING ERRCODE = '22023';
    END IF;
    SELECT a.balance, a.frozen INTO v_balance, v_frozen FROM peer.pl_accounts a WHERE a.id = p_customer FOR UPDATE;
    IF NOT FOUND THEN RAISE EXCEPTION 'unknown customer %', p_customer USING ERRCODE = 'P0003'; END IF;
    SELECT u.entry_id, u.credits INTO entry_id, credits FROM peer.pl_usage_events u
     WHERE u.customer = p_customer AND u.idempotency_key = p_key;
    IF FOUND THEN replayed := true; RETURN; END IF;
    IF v_frozen THEN RAISE EXCEPTION 'customer % frozen', p_customer USING ERRCODE = 'P0004'; END IF;
    SELECT s.status, s.period_end INTO v_status, v_end FROM peer.pl_subscriptions s
     WHERE s.customer = p_customer ORDER BY s.period_end DESC NULLS LAST LIMIT 1;
    IF NOT coalesce(v_status IN ('active', 'trialing') AND v_end > now(), false) AND v_balance <= 0 THEN
        RAISE EXCEPTION 'access denied for customer %', p_customer USING ERRCODE = 'P0006';
    END IF;
    SELECT l.requests, l.per INTO v_requests, v_every FROM peer.pl_limits l
     WHERE l.subject IN (p_customer, '*') AND l.feature IN (p_meter, '*')
     ORDER BY l.subject = '*', l.feature = '*' LIMIT 1;
    IF FOUND THEN
        INSERT INTO peer.pl_buckets AS b (customer, feature, tokens, at) VALUES (p_customer, p_meter, v_requests - 1, now())
            ON CONFLICT (customer, feature) DO UPDATE
           SET tokens = least(v_requests, b.tokens + extract(epoch FROM now() - b.at) / extract(epoch FROM v_every) * v_requests) - 1,
               at = now()
        RETURNING b.tokens INTO v_tokens;
        IF v_tokens < 0 THEN RAISE EXCEPTION 'rate limited' USING ERRCODE = 'P0007'; END IF;
    END IF;
    SELECT m.credits, m.per_units INTO v_credits, v_per FROM peer.pl_meter_prices m
     WHERE m.meter = p_meter AND m.effective_from <= clock_timestamp() ORDER BY m.effective_from DESC LIMIT 1;
    IF NOT FOUND THEN RAISE EXCEPTION 'unknown meter %', p_meter USING ERRCODE = 'P0003'; END IF;
    SELECT c.num INTO v_num FROM peer.pl_usage_carry c WHERE c.customer = p_customer AND c.meter = p_meter;
    v_total := coalesce(v_num, 0) + p_quantity * v_credits;
    credits := v_total / v_per;
    IF credits > v_balance THEN RAISE EXCEPTION 'insufficient credits' USING ERRCODE = 'P0001'; END IF;
    INSERT INTO peer.pl_usage_carry AS c (customer, meter, num) VALUES (p_customer, p_meter, v_total % v_per)
        ON CONFLICT (customer, meter) DO UPDATE SET num = excluded.num;
    IF credits > 0 THEN
        SELECT p.entry_id, p.balance_after INTO entry_id, balance_after
          FROM peer.pl_post(p_customer, 'debit', -credits, 'usage:' || p_key, NULL) p;
    ELSE
        balance_after := v_balance;
    END IF;
    INSERT INTO peer.pl_usage_events (customer, idempotency_key, meter, quantity, credits, entry_id)
    VALUES (p_customer, p_key, p_meter, p_quantity, credits, entry_id);
    replayed := false;
END $$;

-- ---- PL/pgSQL: access ----
CREATE TABLE peer.pl_subscriptions (
    id         text        PRIMARY KEY,
    customer   text        NOT NULL,
    status     text        NOT NULL,
    price_id   text,
    period_end timestamptz,
    created    bigint      NOT NULL,
    event_id   text        NOT NULL
);
CREATE INDEX ON peer.pl_subscriptions (customer);

CREATE FUNCTION peer.pl_can_access(p_customer text) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
DECLARE v_balance bigint; v_frozen boolean; v_status text; v_end timestamptz;
BEGIN
    SELECT a.balance, a.frozen INTO v_balance, v_frozen FROM peer.pl_accounts a WHERE a.id = p_customer;
    IF NOT FOUND OR v_frozen THEN RETURN false; END IF;
    SELECT s.status, s.period_end INTO v_status, v_end FROM peer.pl_subscriptions s
     WHERE s.customer = p_customer ORDER BY s.period_end DESC NULLS LAST LIMIT 1;
    IF v_status IN ('active', 'trialing') AND v_end > now() THEN RETURN true; END IF;
    RETURN v_balance > 0;
END $$;

-- ---- PL/pgSQL: webhook ingest ----
-- With billing's guarantees for events that cannot be applied yet: the event stays stored,
-- marked failed (the apply runs in a subtransaction), and an event that failed for want of
-- its provider customer's link is applied again once an event links it (events arrive out
-- of order: a subscription's before the checkout that names its customer).
CREATE TABLE peer.pl_secrets (endpoint text NOT NULL, secret text NOT NULL, PRIMARY KEY (endpoint, secret));
CREATE TABLE peer.pl_events (
    event_id          text        PRIMARY KEY,
    type              text        NOT NULL,
    created           bigint      NOT NULL,
    body              text        NOT NULL,
    headers           jsonb       NOT NULL,
    provider_customer text,
    status            text        NOT NULL DEFAULT 'applied',
    detail            text,
    received_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON peer.pl_events (provider_customer) WHERE status = 'failed';
CREATE TABLE peer.pl_links (provider_customer text PRIMARY KEY, customer text NOT NULL);
CREATE TABLE peer.pl_purchases (
    purchase_id text   PRIMARY KEY,
    customer    text   NOT NULL,
    credits     bigint NOT NULL
);

-- Applies a stored event: its status ('applied', 'stale', 'ignored'), or an error.
CREATE FUNCTION peer.pl_apply(p_ev jsonb) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_obj jsonb := p_ev->'data'->'object'; v_type text := p_ev->>'type'; v_cust text; v_pc text; v_credits bigint;
BEGIN
    IF v_type <> 'checkout.session.completed' AND v_type NOT LIKE 'customer.subscription.%' THEN
        RETURN 'ignored';
    END IF;
    v_cust := coalesce(v_obj->'metadata'->>'customer', v_obj->>'client_reference_id');
    v_pc := v_obj->>'customer';
    IF v_cust IS NOT NULL AND v_pc IS NOT NULL THEN
        INSERT INTO peer.pl_links VALUES (v_pc, v_cust) ON CONFLICT DO NOTHING;
    ELSIF v_cust IS NULL THEN
        SELECT l.customer INTO v_cust FROM peer.pl_links l WHERE l.provider_customer = v_pc;
        IF NOT FOUND THEN RAISE EXCEPTION 'provider customer % is not linked', v_pc USING ERRCODE = 'P0012'; END IF;
    END IF;
    IF v_type = 'checkout.session.completed' THEN
        IF v_obj->>'payment_status' <> 'paid' THEN RETURN 'ignored'; END IF;
        v_credits := (v_obj->'metadata'->>'credits')::bigint;
        INSERT INTO peer.pl_purchases (purchase_id, customer, credits)
        VALUES (coalesce(v_obj->>'payment_intent', v_obj->>'id'), v_cust, v_credits) ON CONFLICT DO NOTHING;
        IF FOUND THEN
            INSERT INTO peer.pl_accounts (id) VALUES (v_cust) ON CONFLICT DO NOTHING;
            PERFORM 1 FROM peer.pl_accounts WHERE id = v_cust FOR UPDATE;
            PERFORM peer.pl_post(v_cust, 'grant', v_credits, 'stripe:' || coalesce(v_obj->>'payment_intent', v_obj->>'id'), NULL);
        END IF;
        RETURN 'applied';
    END IF;
    INSERT INTO peer.pl_accounts (id) VALUES (v_cust) ON CONFLICT DO NOTHING;
    INSERT INTO peer.pl_subscriptions AS s (id, customer, status, price_id, period_end, created, event_id)
    VALUES (v_obj->>'id', v_cust, v_obj->>'status', v_obj->'items'->'data'->0->'price'->>'id',
            to_timestamp((v_obj->'items'->'data'->0->>'current_period_end')::bigint), (p_ev->>'created')::bigint, p_ev->>'id')
    ON CONFLICT (id) DO UPDATE SET status = excluded.status, price_id = excluded.price_id,
        period_end = excluded.period_end, created = excluded.created, event_id = excluded.event_id
     WHERE (s.created, s.event_id) < (excluded.created, excluded.event_id);
    RETURN CASE WHEN FOUND THEN 'applied' ELSE 'stale' END;
END $$;

-- Applies again, oldest first, the failed events that wait for provider customer p_pc.
CREATE FUNCTION peer.pl_replay(p_pc text) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE r record; v_status text; v_n int := 0;
BEGIN
    FOR r IN SELECT e.event_id, e.body FROM peer.pl_events e
              WHERE e.status = 'failed' AND e.provider_customer = p_pc ORDER BY e.created, e.event_id FOR UPDATE LOOP
        BEGIN
            v_status := peer.pl_apply(r.body::jsonb);
            UPDATE peer.pl_events SET status = v_status, detail = NULL WHERE event_id = r.event_id;
            v_n := v_n + 1;
        EXCEPTION WHEN OTHERS THEN
            UPDATE peer.pl_events SET detail = SQLERRM WHERE event_id = r.event_id;
        END;
    END LOOP;
    RETURN v_n;
END $$;

CREATE FUNCTION peer.pl_ingest(p_endpoint text, p_headers jsonb, p_body text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_sig text := p_headers->>'Stripe-Signature';
    v_t bigint; v_ok boolean := false; v_secret text; v_ev jsonb; v_pc text; v_status text;
BEGIN
    v_t := substring(v_sig FROM 't=(\d+)')::bigint;
    IF v_t IS NULL OR abs(extract(epoch FROM now())::bigint - v_t) > 300 THEN
        RAISE EXCEPTION 'timestamp outside the tolerance' USING ERRCODE = 'P0011';
    END IF;
    FOR v_secret IN SELECT s.secret FROM peer.pl_secrets s WHERE s.endpoint = p_endpoint LOOP
        IF encode(hmac(v_t || '.' || p_body, v_secret, 'sha256'), 'hex')
           IN (SELECT m[1] FROM regexp_matches(v_sig, 'v1=([0-9a-f]{64})', 'g') m) THEN
            v_ok := true;
            EXIT;
        END IF;
    END LOOP;
    IF NOT v_ok THEN RAISE EXCEPTION 'bad signature' USING ERRCODE = 'P0010'; END IF;
    v_ev := p_body::jsonb;
    v_pc := v_ev->'data'->'object'->>'customer';
    INSERT INTO peer.pl_events (event_id, type, created, body, headers, provider_customer)
    VALUES (v_ev->>'id', v_ev->>'type', (v_ev->>'created')::bigint, p_body, p_headers, v_pc)
    ON CONFLICT (event_id) DO NOTHING;
    IF NOT FOUND THEN RETURN 'duplicate'; END IF;
    BEGIN
        v_status := peer.pl_apply(v_ev);
    EXCEPTION WHEN OTHERS THEN
        UPDATE peer.pl_events SET status = 'failed', detail = SQLERRM WHERE event_id = v_ev->>'id';
        RETURN 'failed';
    END;
    IF v_status <> 'applied' THEN
        UPDATE peer.pl_events SET status = v_status WHERE event_id = v_ev->>'id';
    END IF;
    IF v_pc IS NOT NULL AND EXISTS (SELECT FROM peer.pl_events e WHERE e.status = 'failed' AND e.provider_customer = v_pc) THEN
        PERFORM peer.pl_replay(v_pc);
    END IF;
    RETURN v_status;
END $$;
