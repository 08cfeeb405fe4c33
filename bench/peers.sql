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
--  pl_*      what a user would write instead, with the contract's guarantees: straightforward
--            PL/pgSQL with an idempotency key, a journal and a balance row per customer,
--            locked first (SELECT ... FOR UPDATE), so it is correct under concurrency;
--            grants spent in the contract's order with provenance, expiry of grants and
--            holds, outbox rows in the same transaction; ids from gen_random_uuid()
--            (PostgreSQL 15 has no uuidv7). A PL/pgSQL webhook ingest that checks the Stripe
--            HMAC with pgcrypto, dedupes with ON CONFLICT and applies top-ups and
--            subscription snapshots with a high-water mark.
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
-- With the contract's ledger rules (SPEC section 1), as billing keeps them:
--  - credits are grants, spent in the contract's order (soonest expiry first, then higher
--    priority, then oldest), and every debit, hold and settle records how much it took
--    from which grant (provenance: a refund returns credits to those same grants);
--  - expired grants and holds past their ttl stop counting at once: the account keeps the
--    time of its first expiry, and the first call after it expires what is due (journal
--    rows) before it reads the balance;
--  - crossing below a low-balance threshold writes an outbox row in the same transaction.
-- (Before 0.9.0's issue 21 the peer kept one balance per customer: no grants, no order,
-- no expiry, no provenance, no low-balance row. It did less than billing: the issue asks
-- for an honest peer before a win is claimed.)
CREATE TABLE peer.pl_accounts (
    id            text        PRIMARY KEY,
    balance       bigint      NOT NULL DEFAULT 0,          -- live grants' remainders (held credits are out of them)
    seq           bigint      NOT NULL DEFAULT 0,
    frozen        boolean     NOT NULL DEFAULT false,
    next_event_at timestamptz NOT NULL DEFAULT 'infinity', -- the first grant or hold expiry: the balance holds until then
    low_balance   bigint,                                  -- the threshold, if any
    low_notified  boolean     NOT NULL DEFAULT false,
    access_reason text                                     -- the last access reason noted (outbox: access_changed)
) WITH (fillfactor = 50);
CREATE TABLE peer.pl_grants (
    customer   text        NOT NULL,
    id         uuid        NOT NULL DEFAULT gen_random_uuid(),
    seq        bigint      GENERATED ALWAYS AS IDENTITY,     -- "oldest first"
    amount     bigint      NOT NULL,
    remaining  bigint      NOT NULL,
    open       boolean     NOT NULL,                         -- remaining > 0 (the spending index covers open grants)
    expires_at timestamptz NOT NULL DEFAULT 'infinity',
    priority   int         NOT NULL DEFAULT 0,
    PRIMARY KEY (customer, id)
) WITH (fillfactor = 70);
CREATE INDEX pl_grants_order ON peer.pl_grants (customer, expires_at, priority DESC, seq) WHERE open;
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
    grants          uuid[]      NOT NULL,                    -- provenance: the grants the entry moved
    amounts         bigint[]    NOT NULL,                    -- and how much of it each carries
    PRIMARY KEY (customer, seq),
    UNIQUE (customer, idempotency_key)
);
CREATE TABLE peer.pl_holds (
    id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    customer   text        NOT NULL,
    amount     bigint      NOT NULL,
    status     text        NOT NULL DEFAULT 'active',
    settled    bigint,
    expires_at timestamptz NOT NULL,
    grants     uuid[]      NOT NULL,                         -- where the held credits came from
    amounts    bigint[]    NOT NULL
) WITH (fillfactor = 70);
CREATE INDEX pl_holds_active ON peer.pl_holds (customer, expires_at) WHERE status = 'active';
CREATE TABLE peer.pl_outbox (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer   text,
    kind       text        NOT NULL,
    payload    jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
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

-- Journal entry of a balance change on an account the caller has locked, with its
-- provenance; the low-balance threshold checked; next_event_at lowered to p_next.
CREATE FUNCTION peer.pl_post(p_customer text, p_kind text, p_amount bigint, p_key text, p_hold uuid,
                             p_grants uuid[], p_amounts bigint[], p_next timestamptz DEFAULT 'infinity',
                             OUT entry_id uuid, OUT balance_after bigint)
LANGUAGE plpgsql AS $$
DECLARE v_seq bigint; v_low bigint; v_notified boolean;
BEGIN
    UPDATE peer.pl_accounts a SET balance = a.balance + p_amount, seq = a.seq + 1, next_event_at = least(a.next_event_at, p_next)
     WHERE a.id = p_customer RETURNING a.balance, a.seq, a.low_balance, a.low_notified INTO balance_after, v_seq, v_low, v_notified;
    entry_id := gen_random_uuid();
    INSERT INTO peer.pl_journal (customer, seq, entry_id, kind, amount, balance_after, idempotency_key, hold_id, grants, amounts)
    VALUES (p_customer, v_seq, entry_id, p_kind, p_amount, balance_after, p_key, p_hold, p_grants, p_amounts);
    IF v_low IS NOT NULL AND (balance_after < v_low) <> v_notified THEN
        PERFORM peer.pl_low_balance(p_customer, balance_after, v_low);
    END IF;
END $$;

-- A balance that crossed its low-balance threshold: below it, an outbox row; back above,
-- the threshold re-armed.
CREATE FUNCTION peer.pl_low_balance(p_customer text, p_balance bigint, p_low bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE peer.pl_accounts SET low_notified = p_balance < p_low WHERE id = p_customer;
    IF p_balance < p_low THEN
        INSERT INTO peer.pl_outbox (customer, kind, payload)
        VALUES (p_customer, 'low_balance', jsonb_build_object('balance', p_balance, 'threshold', p_low));
    END IF;
END $$;

-- Takes p_amount from the live grants of an account the caller has locked, in the
-- contract's order: the grants and what it took from each (BL001's P0001 if they hold less).
-- Most calls take from the first grant alone: one statement.
CREATE FUNCTION peer.pl_take(p_customer text, p_amount bigint, OUT grants uuid[], OUT amounts bigint[])
LANGUAGE plpgsql AS $$
DECLARE g record; v_need bigint := p_amount; v_x bigint; v_id uuid;
BEGIN
    UPDATE peer.pl_grants t SET remaining = t.remaining - p_amount, open = t.remaining > p_amount
     WHERE t.customer = p_customer AND t.remaining >= p_amount
       AND t.id = (SELECT f.id FROM peer.pl_grants f WHERE f.customer = p_customer AND f.open AND f.expires_at > now()
                    ORDER BY f.expires_at, f.priority DESC, f.seq LIMIT 1)
    RETURNING t.id INTO v_id;
    IF FOUND THEN
        grants := ARRAY[v_id]; amounts := ARRAY[p_amount];
        RETURN;
    END IF;
    grants := '{}'; amounts := '{}';
    FOR g IN SELECT t.id, t.remaining FROM peer.pl_grants t
              WHERE t.customer = p_customer AND t.open AND t.expires_at > now()
              ORDER BY t.expires_at, t.priority DESC, t.seq LOOP
        v_x := least(g.remaining, v_need);
        UPDATE peer.pl_grants t SET remaining = t.remaining - v_x, open = t.remaining - v_x > 0
         WHERE t.customer = p_customer AND t.id = g.id;
        grants := grants || g.id; amounts := amounts || v_x;
        v_need := v_need - v_x;
        EXIT WHEN v_need = 0;
    END LOOP;
    IF v_need > 0 THEN RAISE EXCEPTION 'insufficient credits' USING ERRCODE = 'P0001'; END IF;
END $$;

-- Gives credits back to the grants they came from (a settle's unused part, a lapsed hold).
-- Returns the first expiry among them, for next_event_at: credits back on a grant that
-- has expired meanwhile are due to expire at once.
CREATE FUNCTION peer.pl_give_back(p_customer text, p_grants uuid[], p_amounts bigint[]) RETURNS timestamptz
LANGUAGE plpgsql AS $$
DECLARE v_next timestamptz := 'infinity';
BEGIN
    WITH u AS (
        UPDATE peer.pl_grants g SET remaining = g.remaining + b.x, open = true
          FROM unnest(p_grants, p_amounts) b(id, x)
         WHERE g.customer = p_customer AND g.id = b.id AND b.x > 0
        RETURNING g.expires_at)
    SELECT coalesce(min(expires_at), 'infinity') INTO v_next FROM u;
    RETURN v_next;
END $$;

-- The first call on an account after its next_event_at: its holds past their ttl are
-- released (credits back to their grants) and its grants past their expiry expire, each
-- with a journal row; next_event_at moves to the next expiry. Returns the balance.
CREATE FUNCTION peer.pl_expire(p_customer text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE h record; g record; v_balance bigint;
BEGIN
    FOR h IN SELECT t.id, t.amount, t.grants, t.amounts FROM peer.pl_holds t
              WHERE t.customer = p_customer AND t.status = 'active' AND t.expires_at <= now() FOR UPDATE LOOP
        UPDATE peer.pl_holds SET status = 'expired' WHERE id = h.id;
        PERFORM peer.pl_post(p_customer, 'release', h.amount, NULL, h.id, h.grants, h.amounts,
                             peer.pl_give_back(p_customer, h.grants, h.amounts));
    END LOOP;
    FOR g IN SELECT t.id, t.remaining FROM peer.pl_grants t
              WHERE t.customer = p_customer AND t.open AND t.expires_at <= now() LOOP
        UPDATE peer.pl_grants SET remaining = 0, open = false WHERE customer = p_customer AND id = g.id;
        PERFORM peer.pl_post(p_customer, 'expiry', -g.remaining, NULL, NULL, ARRAY[g.id], ARRAY[g.remaining]);
    END LOOP;
    UPDATE peer.pl_accounts a SET next_event_at = least(
            (SELECT min(t.expires_at) FROM peer.pl_grants t WHERE t.customer = p_customer AND t.open),
            (SELECT min(t.expires_at) FROM peer.pl_holds t WHERE t.customer = p_customer AND t.status = 'active'),
            'infinity')
     WHERE a.id = p_customer RETURNING a.balance INTO v_balance;
    RETURN v_balance;
END $$;

-- A new grant on an account the caller has locked (a top-up).
CREATE FUNCTION peer.pl_grant(p_customer text, p_amount bigint, p_key text, p_expires timestamptz DEFAULT 'infinity',
                              p_priority int DEFAULT 0) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE v_id uuid;
BEGIN
    INSERT INTO peer.pl_grants (customer, amount, remaining, open, expires_at, priority)
    VALUES (p_customer, p_amount, p_amount, true, p_expires, p_priority) RETURNING id INTO v_id;
    PERFORM peer.pl_post(p_customer, 'grant', p_amount, p_key, NULL, ARRAY[v_id], ARRAY[p_amount], p_expires);
    RETURN v_id;
END $$;

CREATE FUNCTION peer.pl_debit(p_customer text, p_amount bigint, p_key text,
                              OUT entry_id uuid, OUT balance_after bigint, OUT replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE v_balance bigint; v_frozen boolean; v_next timestamptz; v_amount bigint; v_seq bigint; v_low bigint;
        v_notified boolean; v_grants uuid[]; v_amounts bigint[];
BEGIN
    IF p_amount IS NULL OR p_amount <= 0 OR p_key IS NULL OR p_key = '' THEN
        RAISE EXCEPTION 'invalid argument' USING ERRCODE = '22023';
    END IF;
    SELECT a.balance, a.frozen, a.next_event_at INTO v_balance, v_frozen, v_next
      FROM peer.pl_accounts a WHERE a.id = p_customer FOR UPDATE;
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
    IF v_next <= now() THEN v_balance := peer.pl_expire(p_customer); END IF;
    IF v_balance < p_amount THEN RAISE EXCEPTION 'insufficient credits' USING ERRCODE = 'P0001'; END IF;
    -- (pl_take's first statement and pl_post's, inlined: the hot path)
    UPDATE peer.pl_grants t SET remaining = t.remaining - p_amount, open = t.remaining > p_amount
     WHERE t.customer = p_customer AND t.remaining >= p_amount
       AND t.id = (SELECT f.id FROM peer.pl_grants f WHERE f.customer = p_customer AND f.open AND f.expires_at > now()
                    ORDER BY f.expires_at, f.priority DESC, f.seq LIMIT 1)
    RETURNING ARRAY[t.id], ARRAY[p_amount] INTO v_grants, v_amounts;
    IF NOT FOUND THEN
        SELECT t.grants, t.amounts INTO v_grants, v_amounts FROM peer.pl_take(p_customer, p_amount) t;
    END IF;
    UPDATE peer.pl_accounts a SET balance = a.balance - p_amount, seq = a.seq + 1
     WHERE a.id = p_customer RETURNING a.balance, a.seq, a.low_balance, a.low_notified INTO balance_after, v_seq, v_low, v_notified;
    entry_id := gen_random_uuid();
    INSERT INTO peer.pl_journal (customer, seq, entry_id, kind, amount, balance_after, idempotency_key, grants, amounts)
    VALUES (p_customer, v_seq, entry_id, 'debit', -p_amount, balance_after, p_key, v_grants, v_amounts);
    IF v_low IS NOT NULL AND (balance_after < v_low) <> v_notified THEN
        PERFORM peer.pl_low_balance(p_customer, balance_after, v_low);
    END IF;
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
DECLARE v_balance bigint; v_frozen boolean; v_next timestamptz; v_hold uuid; v_expires timestamptz; t record;
BEGIN
    IF p_amount IS NULL OR p_amount <= 0 OR p_key IS NULL OR p_key = '' THEN
        RAISE EXCEPTION 'invalid argument' USING ERRCODE = '22023';
    END IF;
    SELECT a.balance, a.frozen, a.next_event_at INTO v_balance, v_frozen, v_next
      FROM peer.pl_accounts a WHERE a.id = p_customer FOR UPDATE;
    IF NOT FOUND THEN RAISE EXCEPTION 'unknown customer %', p_customer USING ERRCODE = 'P0003'; END IF;
    SELECT j.hold_id INTO v_hold FROM peer.pl_journal j WHERE j.customer = p_customer AND j.idempotency_key = p_key;
    IF FOUND THEN RETURN v_hold; END IF;
    IF v_frozen THEN RAISE EXCEPTION 'customer % frozen', p_customer USING ERRCODE = 'P0004'; END IF;
    IF v_next <= now() THEN v_balance := peer.pl_expire(p_customer); END IF;
    IF v_balance < p_amount THEN RAISE EXCEPTION 'insufficient credits' USING ERRCODE = 'P0001'; END IF;
    SELECT * INTO t FROM peer.pl_take(p_customer, p_amount);
    v_expires := clock_timestamp() + p_ttl;
    INSERT INTO peer.pl_holds (customer, amount, expires_at, grants, amounts)
    VALUES (p_customer, p_amount, v_expires, t.grants, t.amounts) RETURNING id INTO v_hold;
    PERFORM peer.pl_post(p_customer, 'hold', -p_amount, p_key, v_hold, t.grants, t.amounts, v_expires);
    RETURN v_hold;
END $$;

-- The hold's credits are consumed in the order they were taken; the rest goes back to
-- its grants, and more than the hold is taken from the live grants.
CREATE FUNCTION peer.pl_settle(p_hold uuid, p_actual bigint,
                               OUT entry_id uuid, OUT balance_after bigint, OUT replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE h peer.pl_holds; v_balance bigint; v_next timestamptz; v_left bigint; v_x bigint;
        v_grants uuid[] := '{}'; v_amounts bigint[] := '{}'; t record;
BEGIN
    SELECT * INTO h FROM peer.pl_holds WHERE id = p_hold;
    IF NOT FOUND THEN RAISE EXCEPTION 'unknown hold %', p_hold USING ERRCODE = 'P0003'; END IF;
    SELECT a.balance, a.next_event_at INTO v_balance, v_next FROM peer.pl_accounts a WHERE a.id = h.customer FOR UPDATE;
    IF v_next <= now() THEN v_balance := peer.pl_expire(h.customer); END IF;
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
    IF p_actual > h.amount THEN
        SELECT * INTO t FROM peer.pl_take(h.customer, p_actual - h.amount);
        v_grants := t.grants; v_amounts := t.amounts;
    ELSE
        v_left := p_actual;
        FOR k IN 1..cardinality(h.grants) LOOP
            v_x := least(h.amounts[k], v_left);
            v_left := v_left - v_x;
            IF h.amounts[k] > v_x THEN
                v_grants := v_grants || h.grants[k]; v_amounts := v_amounts || (h.amounts[k] - v_x);
            END IF;
        END LOOP;
    END IF;
    UPDATE peer.pl_holds SET status = 'settled', settled = p_actual WHERE id = p_hold;
    SELECT p.entry_id, p.balance_after INTO entry_id, balance_after
      FROM peer.pl_post(h.customer, 'settle', h.amount - p_actual, 'settle:' || p_hold, p_hold, v_grants, v_amounts,
                        CASE WHEN p_actual < h.amount THEN peer.pl_give_back(h.customer, v_grants, v_amounts) ELSE 'infinity' END) p;
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
DECLARE v_balance bigint; v_frozen boolean; v_next timestamptz; v_credits bigint; v_per bigint; v_num bigint; v_total bigint;
        v_status text; v_end timestamptz; v_requests int; v_every interval; v_tokens float8; t record;
BEGIN
    IF p_quantity IS NULL OR p_quantity <= 0 OR p_key IS NULL OR p_key = '' THEN
        RAISE EXCEPTION 'invalid argument' USING ERRCODE = '22023';
    END IF;
    SELECT a.balance, a.frozen, a.next_event_at INTO v_balance, v_frozen, v_next
      FROM peer.pl_accounts a WHERE a.id = p_customer FOR UPDATE;
    IF NOT FOUND THEN RAISE EXCEPTION 'unknown customer %', p_customer USING ERRCODE = 'P0003'; END IF;
    SELECT u.entry_id, u.credits INTO entry_id, credits FROM peer.pl_usage_events u
     WHERE u.customer = p_customer AND u.idempotency_key = p_key;
    IF FOUND THEN replayed := true; RETURN; END IF;
    IF v_frozen THEN RAISE EXCEPTION 'customer % frozen', p_customer USING ERRCODE = 'P0004'; END IF;
    IF v_next <= now() THEN v_balance := peer.pl_expire(p_customer); END IF;
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
        SELECT * INTO t FROM peer.pl_take(p_customer, credits);
        SELECT p.entry_id, p.balance_after INTO entry_id, balance_after
          FROM peer.pl_post(p_customer, 'debit', -credits, 'usage:' || p_key, NULL, t.grants, t.amounts) p;
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

-- The balance as of now, for a read (which writes nothing): the account's while nothing
-- is due, else its live grants' remainders and what its holds past their ttl give back.
CREATE FUNCTION peer.pl_live_balance(p_customer text) RETURNS bigint
LANGUAGE sql STABLE AS $$
SELECT coalesce((SELECT sum(g.remaining) FROM peer.pl_grants g
                  WHERE g.customer = p_customer AND g.open AND g.expires_at > now()), 0)
     + coalesce((SELECT sum(b.x) FROM peer.pl_holds h, unnest(h.grants, h.amounts) b(id, x), peer.pl_grants g
                  WHERE h.customer = p_customer AND h.status = 'active' AND h.expires_at <= now()
                    AND g.customer = p_customer AND g.id = b.id AND g.expires_at > now()), 0)::bigint
$$;

CREATE FUNCTION peer.pl_can_access(p_customer text) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
DECLARE v_balance bigint; v_frozen boolean; v_next timestamptz; v_status text; v_end timestamptz;
BEGIN
    SELECT a.balance, a.frozen, a.next_event_at INTO v_balance, v_frozen, v_next FROM peer.pl_accounts a WHERE a.id = p_customer;
    IF NOT FOUND OR v_frozen THEN RETURN false; END IF;
    SELECT s.status, s.period_end INTO v_status, v_end FROM peer.pl_subscriptions s
     WHERE s.customer = p_customer ORDER BY s.period_end DESC NULLS LAST LIMIT 1;
    IF v_status IN ('active', 'trialing') AND v_end > now() THEN RETURN true; END IF;
    IF v_next <= now() THEN v_balance := peer.pl_live_balance(p_customer); END IF;
    RETURN v_balance > 0;
END $$;

-- The customer's access reason now; a change from the last one noted writes an outbox
-- row (billing's access_changed) in the caller's transaction.
CREATE FUNCTION peer.pl_note_access(p_customer text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE v_old text; v_new text; v_balance bigint; v_frozen boolean; v_next timestamptz; v_status text; v_end timestamptz;
BEGIN
    SELECT a.access_reason, a.balance, a.frozen, a.next_event_at INTO v_old, v_balance, v_frozen, v_next
      FROM peer.pl_accounts a WHERE a.id = p_customer;
    IF NOT FOUND THEN RETURN; END IF;
    SELECT s.status, s.period_end INTO v_status, v_end FROM peer.pl_subscriptions s
     WHERE s.customer = p_customer ORDER BY s.period_end DESC NULLS LAST LIMIT 1;
    IF v_next <= now() THEN v_balance := peer.pl_live_balance(p_customer); END IF;
    v_new := CASE WHEN v_frozen THEN 'frozen'
                  WHEN v_status IN ('active', 'trialing') AND v_end > now() THEN 'subscription'
                  WHEN v_balance > 0 THEN 'credits' ELSE 'none' END;
    IF v_old IS DISTINCT FROM v_new THEN
        UPDATE peer.pl_accounts SET access_reason = v_new WHERE id = p_customer;
        INSERT INTO peer.pl_outbox (customer, kind, payload)
        VALUES (p_customer, 'access_changed', jsonb_build_object('from', v_old, 'to', v_new, 'allowed', v_new IN ('subscription', 'credits')));
    END IF;
END $$;

-- ---- PL/pgSQL: webhook ingest ----
-- With billing's guarantees for events that cannot be applied yet: the event stays stored,
-- marked failed (the apply runs in a subtransaction), and an event that failed for want of
-- its provider customer's link is applied again once an event links it (events arrive out
-- of order: a subscription's before the checkout that names its customer). A top-up is a
-- grant; a subscription's new status, a customer's changed access and a failed event each
-- write an outbox row (SPEC section 5), in the same transaction.
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
    v_old text; v_new text;
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
            PERFORM peer.pl_grant(v_cust, v_credits, 'stripe:' || coalesce(v_obj->>'payment_intent', v_obj->>'id'));
            PERFORM peer.pl_note_access(v_cust);
        END IF;
        RETURN 'applied';
    END IF;
    -- (the customer's lock, so the status read here is the one the upsert replaces)
    INSERT INTO peer.pl_accounts (id) VALUES (v_cust) ON CONFLICT DO NOTHING;
    PERFORM 1 FROM peer.pl_accounts WHERE id = v_cust FOR UPDATE;
    SELECT s.status INTO v_old FROM peer.pl_subscriptions s WHERE s.id = v_obj->>'id';
    INSERT INTO peer.pl_subscriptions AS s (id, customer, status, price_id, period_end, created, event_id)
    VALUES (v_obj->>'id', v_cust, v_obj->>'status', v_obj->'items'->'data'->0->'price'->>'id',
            to_timestamp((v_obj->'items'->'data'->0->>'current_period_end')::bigint), (p_ev->>'created')::bigint, p_ev->>'id')
    ON CONFLICT (id) DO UPDATE SET status = excluded.status, price_id = excluded.price_id,
        period_end = excluded.period_end, created = excluded.created, event_id = excluded.event_id
     WHERE (s.created, s.event_id) < (excluded.created, excluded.event_id)
    RETURNING s.status INTO v_new;
    IF NOT FOUND THEN RETURN 'stale'; END IF;
    IF v_old IS DISTINCT FROM v_new THEN
        INSERT INTO peer.pl_outbox (customer, kind, payload)
        VALUES (v_cust, 'subscription_status', jsonb_build_object('subscription', v_obj->>'id', 'from', v_old, 'to', v_new));
    END IF;
    PERFORM peer.pl_note_access(v_cust);
    RETURN 'applied';
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
        INSERT INTO peer.pl_outbox (kind, payload)
        VALUES ('event_failed', jsonb_build_object('event_id', v_ev->>'id', 'type', v_ev->>'type', 'error', SQLERRM));
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
