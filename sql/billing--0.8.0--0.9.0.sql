-- billing 0.8.0 -> 0.9.0. Hand-written (0.9.0 is not released yet: this script may change
-- until it is, and never after). What 0.9.0 changes:
--   1. Plan allowances per (subscription, period), from what paid invoices say: tables
--      period_invoices and subscription_periods, three columns of subscriptions saying
--      where the plan in force came from; allowances granted before 0.9.0 become their
--      periods' facts.
--   2. Reconciliation: events fetched from the provider's API (billing.ingest_fetched, the
--      billing_sync role, events.via, billing.sync_marks, billing.sync_status).
--   3. Every one-row function returns one composite (RETURNS record with OUT parameters)
--      instead of a one-row set.
--   4. add_secret refuses secrets that cannot verify safely (billing._check_secret).
--   5. verify() is one function with every check, the plan periods' included: the
--      wrappers 0.5.0 to 0.8.0 chained (_verify_ledger, _verify_slots, _verify_entry_ids)
--      are dropped, as a fresh install (sql/operations.sql) never has them.
--   6. billing._grants_now gets the ACL every other table and view has (owner only: its
--      meaning is unchanged), as the fresh install's REVOKE ... ON ALL TABLES gives it.
--   7. ack_outbox answers false, not NULL, for a row acknowledged before.
--   8. Ids, keys, names and codes are text COLLATE "C" (the last section): the same
--      speed in every locale.
\echo Use "ALTER EXTENSION billing UPDATE TO '0.9.0'" to load this file. \quit

-- billing 0.9.0: plan allowances per (subscription, period) (SPEC section 2, "Plan changes").
--
-- A period's allowance is computed from what its paid invoices say (src/webhook/allowance.rs)
-- and granted as the difference from what the ledger already got, so it is the same for
-- every order of arrival and never passes the largest plan held in the period.

-- What each paid invoice says of each period its lines touch: one row for its base lines
-- and one per change it bills (a duplicate delivery finds its rows and changes nothing).
CREATE TABLE billing.period_invoices (
    customer        text        NOT NULL,
    subscription_id text        NOT NULL,
    period_end      timestamptz NOT NULL,
    invoice_id      text        NOT NULL,
    billing_reason  text,
    period_start    timestamptz,          -- earliest start of its base lines
    base            bigint      NOT NULL, -- allowance of its base (non-proration) lines
    old_allowance   bigint      NOT NULL, -- of its proration credits (unused time on the old items)
    new_allowance   bigint      NOT NULL, -- of its proration charges (the rest of the period on the new items)
    change_at       timestamptz NOT NULL, -- when its change took effect; -infinity for its base lines
    created         bigint      NOT NULL, -- the invoice event's created
    PRIMARY KEY (customer, subscription_id, period_end, invoice_id, change_at)
);
COMMENT ON TABLE billing.period_invoices IS 'What each paid invoice says of each subscription period: the facts a period''s allowance is computed from.';

CREATE TABLE billing.subscription_periods (
    customer        text        NOT NULL,
    subscription_id text        NOT NULL,
    period_end      timestamptz NOT NULL,
    period_start    timestamptz,          -- the latest start reported (invoice lines, subscription)
    base            bigint      NOT NULL DEFAULT 0,  -- the plan billed for the period (largest base)
    ceiling         bigint      NOT NULL DEFAULT 0,  -- the largest allowance held in the period
    allowance       bigint      NOT NULL DEFAULT 0,  -- what the period is entitled to
    granted         bigint      NOT NULL DEFAULT 0,  -- what the ledger got (less when paid after the end)
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer, subscription_id, period_end)
);
COMMENT ON TABLE billing.subscription_periods IS 'Per subscription period: the plan allowance it is entitled to and what was granted.';

-- The plan in force follows the latest subscription event; an invoice names it only for a
-- subscription no event has described yet, and then the latest invoice wins.
ALTER TABLE billing.subscriptions
    ADD COLUMN plan_created bigint,
    ADD COLUMN plan_event text,
    ADD COLUMN plan_from_subscription boolean NOT NULL DEFAULT false;
UPDATE billing.subscriptions SET plan_from_subscription = true
 WHERE plan IS NOT NULL AND EXISTS (SELECT FROM billing.provider_objects o
                                     WHERE o.provider = subscriptions.provider AND o.object_id = subscriptions.subscription_id);

-- Allowances granted before 0.9.0 (one grant per paid invoice, keyed stripe:invoice:<id>)
-- become their periods' facts, so a later change in the same period tops up from them.
INSERT INTO billing.period_invoices (customer, subscription_id, period_end, invoice_id, base, old_allowance, new_allowance, change_at, created)
SELECT g.customer, g.metadata->>'subscription', g.expires_at, g.metadata->>'invoice', g.amount, 0, 0, '-infinity', 0
  FROM billing.grants g
 WHERE g.source LIKE 'plan:%' AND g.metadata ? 'invoice' AND g.metadata ? 'subscription' AND g.expires_at <> 'infinity'
ON CONFLICT DO NOTHING;
INSERT INTO billing.subscription_periods (customer, subscription_id, period_end, base, ceiling, allowance, granted)
SELECT g.customer, g.metadata->>'subscription', g.expires_at, max(g.amount), max(g.amount), max(g.amount), sum(g.amount)
  FROM billing.grants g
 WHERE g.source LIKE 'plan:%' AND g.metadata ? 'invoice' AND g.metadata ? 'subscription' AND g.expires_at <> 'infinity'
 GROUP BY 1, 2, 3
ON CONFLICT DO NOTHING;

SELECT pg_catalog.pg_extension_config_dump('billing.period_invoices', '');
SELECT pg_catalog.pg_extension_config_dump('billing.subscription_periods', '');

REVOKE ALL ON billing.period_invoices, billing.subscription_periods FROM PUBLIC;
GRANT SELECT ON billing.period_invoices, billing.subscription_periods TO billing_reader;

-- billing 0.9.0: reconciliation, events fetched from the provider's API (SPEC section 2).
--
-- Stripe keeps events 30 days and stops retrying a failing endpoint after 3: what was never
-- delivered is fetched (GET /v1/events, scripts/stripe-sync.py) and handed to
-- billing.ingest_fetched, which stores and applies it exactly as a delivery, unsigned.
-- Hence its own role: a webhook receiver (billing_webhook) or the application
-- (billing_app) must not be able to make up an event.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'billing_sync') THEN
        BEGIN
            CREATE ROLE billing_sync NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- another database's CREATE EXTENSION created it just now
        END;
    END IF;
END $$;
GRANT USAGE ON SCHEMA billing TO billing_sync;

-- How each event was first stored: 'delivery' (a signed webhook) or 'fetch' (from the
-- provider's API). Whichever comes second is a duplicate.
ALTER TABLE billing.events ADD COLUMN via text NOT NULL DEFAULT 'delivery';

CREATE FUNCTION billing.ingest_fetched(endpoint text, body text,
    OUT event_id text, OUT status text, OUT detail text)
RETURNS record VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_ingest_fetched';
COMMENT ON FUNCTION billing.ingest_fetched IS 'Stores once and applies a Stripe event fetched from the provider''s API (unsigned): as a delivery would, a duplicate of one.';

-- How far the sync from the provider's API got, per endpoint: the newest event a fetch
-- handed in, stored before or not. The sync tool starts its next run there (minus a
-- margin), not at the newest event stored: while deliveries flow, that is about now, and
-- an outage whose events the provider stopped retrying would never be looked at.
CREATE TABLE billing.sync_marks (
    endpoint       text        PRIMARY KEY REFERENCES billing.endpoints ON DELETE CASCADE,
    synced_through timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL
);
SELECT pg_catalog.pg_extension_config_dump('billing.sync_marks', '');

CREATE VIEW billing.sync_status AS
SELECT e.name AS endpoint, e.provider,
       (SELECT max(v.created) FROM billing.events v WHERE v.endpoint = e.name AND v.via = 'delivery') AS newest_delivered,
       (SELECT max(v.created) FROM billing.events v WHERE v.endpoint = e.name AND v.via = 'fetch') AS newest_fetched,
       (SELECT count(*) FROM billing.events v WHERE v.endpoint = e.name AND v.via = 'delivery') AS delivered,
       (SELECT count(*) FROM billing.events v WHERE v.endpoint = e.name AND v.via = 'fetch') AS fetched,
       (SELECT m.synced_through FROM billing.sync_marks m WHERE m.endpoint = e.name) AS synced_through
  FROM billing.endpoints e;
COMMENT ON VIEW billing.sync_status IS 'Per endpoint: the newest event stored from deliveries and from fetches, how many each path brought, and how far the sync from the provider''s API got.';

REVOKE ALL ON FUNCTION billing.ingest_fetched(text, text) FROM PUBLIC;
REVOKE ALL ON billing.sync_status, billing.sync_marks FROM PUBLIC;
GRANT SELECT ON billing.sync_marks TO billing_admin;
GRANT EXECUTE ON FUNCTION billing.ingest_fetched(text, text) TO billing_sync;
GRANT SELECT ON billing.sync_status TO billing_sync, billing_reader;

-- billing 0.9.0: every one-row function returns one composite (SPEC, top).
--
-- Until 0.8.0 the functions that answer one row were declared RETURNS TABLE (...) ROWS 1:
-- a set, so `coalesce((billing.record_usage(...)).credits, 0)` failed with 0A000
-- (set-returning function in COALESCE). They now return a single composite value through
-- OUT parameters (RETURNS record, not SETOF), which works in every place a value does and
-- still reads as a row in FROM: `SELECT * FROM billing.debit(...)`, `LATERAL
-- billing.replay(...)`, `SELECT (billing.debit(...)).balance_after`, PL/pgSQL
-- `SELECT * INTO`. The Rust entry points answer a heap tuple of the declared row type
-- (src/pg/one_row.rs).
--
-- A return type cannot be changed in place: each function is dropped and created again
-- with everything else it had: name, arguments and defaults, column names and types, the
-- attributes and SET clauses (enable_seqscan = off), its comment, and its privileges
-- (nothing for PUBLIC, EXECUTE for the same roles as before).
-- Nothing in the schema depends on them (SQL bodies name them only as text).
-- replay_failed() keeps returning a set (one row per failed event); its body reads
-- billing.replay(provider, event_id) in FROM, which takes the composite as it took the row.

-- ---- the ledger ----

DROP FUNCTION billing.debit(text, bigint, text, jsonb);
CREATE FUNCTION billing.debit(customer text, amount bigint, idempotency_key text, metadata jsonb DEFAULT '{}',
    OUT entry_id uuid, OUT balance_after bigint, OUT replayed boolean)
RETURNS record
VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_debit';
COMMENT ON FUNCTION billing.debit(text, bigint, text, jsonb) IS 'Takes credits now, soonest-expiring grants first; BL001 when short, BL002 on a reused key.';
REVOKE ALL ON FUNCTION billing.debit(text, bigint, text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION billing.debit(text, bigint, text, jsonb) TO billing_app;

DROP FUNCTION billing.settle(uuid, bigint);
CREATE FUNCTION billing.settle(reservation_id uuid, actual bigint,
    OUT entry_id uuid, OUT balance_after bigint, OUT replayed boolean)
RETURNS record
VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_settle';
COMMENT ON FUNCTION billing.settle(uuid, bigint) IS 'Turns a hold into a debit of actual; the rest goes back. Above the hold only if available.';
REVOKE ALL ON FUNCTION billing.settle(uuid, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION billing.settle(uuid, bigint) TO billing_app;

DROP FUNCTION billing.release(uuid);
CREATE FUNCTION billing.release(reservation_id uuid,
    OUT entry_id uuid, OUT balance_after bigint, OUT replayed boolean)
RETURNS record
VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_release';
COMMENT ON FUNCTION billing.release(uuid) IS 'Gives a hold back whole.';
REVOKE ALL ON FUNCTION billing.release(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION billing.release(uuid) TO billing_app;

DROP FUNCTION billing.refund(uuid, bigint, text);
CREATE FUNCTION billing.refund(entry_id uuid, amount bigint DEFAULT NULL, idempotency_key text DEFAULT NULL,
    OUT entry_id uuid, OUT balance_after bigint, OUT replayed boolean)
RETURNS record
VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_refund';
COMMENT ON FUNCTION billing.refund(uuid, bigint, text) IS 'Returns credits of a debit or settle (all, or part) to the grants they came from.';
REVOKE ALL ON FUNCTION billing.refund(uuid, bigint, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION billing.refund(uuid, bigint, text) TO billing_app;

-- ---- access and metering ----

DROP FUNCTION billing.access(text, text);
CREATE FUNCTION billing.access(customer text, feature text DEFAULT NULL,
    OUT allowed boolean, OUT reason text, OUT plan text, OUT status text, OUT balance bigint, OUT period_end timestamptz)
RETURNS record
STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_access';
COMMENT ON FUNCTION billing.access(text, text) IS 'Whether the customer may use the product (or a feature) now, and why: active, trialing, grace, past_due, canceled, frozen, no_plan, no_feature, no_credits.';
REVOKE ALL ON FUNCTION billing.access(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION billing.access(text, text) TO billing_app;

DROP FUNCTION billing.charge(text, text, bigint, text);
CREATE FUNCTION billing.charge(customer text, feature text, amount bigint, idempotency_key text,
    OUT entry_id uuid, OUT balance_after bigint, OUT replayed boolean)
RETURNS record
VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_charge';
COMMENT ON FUNCTION billing.charge(text, text, bigint, text) IS 'Access check, rate limit and debit in one call; denies with the reason''s SQLSTATE.';
REVOKE ALL ON FUNCTION billing.charge(text, text, bigint, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION billing.charge(text, text, bigint, text) TO billing_app;

DROP FUNCTION billing.record_usage(text, text, bigint, text, timestamptz, uuid);
CREATE FUNCTION billing.record_usage(customer text, meter text, quantity bigint, idempotency_key text,
    occurred_at timestamptz DEFAULT NULL, reservation_id uuid DEFAULT NULL,
    OUT entry_id uuid, OUT credits bigint, OUT balance_after bigint, OUT replayed boolean)
RETURNS record
VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_record_usage';
COMMENT ON FUNCTION billing.record_usage(text, text, bigint, text, timestamptz, uuid) IS 'Rates usage at the price in force at occurred_at and debits it (or settles a hold), exactly, idempotently.';
REVOKE ALL ON FUNCTION billing.record_usage(text, text, bigint, text, timestamptz, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION billing.record_usage(text, text, bigint, text, timestamptz, uuid) TO billing_app;

-- ---- webhooks ----

DROP FUNCTION billing.ingest(text, jsonb, text);
CREATE FUNCTION billing.ingest(endpoint text, headers jsonb, body text,
    OUT event_id text, OUT status text, OUT detail text)
RETURNS record
VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_ingest';
COMMENT ON FUNCTION billing.ingest(text, jsonb, text) IS 'Verifies, stores once and applies a webhook delivery; BL010-BL014 store nothing.';
REVOKE ALL ON FUNCTION billing.ingest(text, jsonb, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION billing.ingest(text, jsonb, text) TO billing_webhook;

-- replay(provider, event_id) before the wrapper whose body reads it (checked at CREATE).
DROP FUNCTION billing.replay(text);
DROP FUNCTION billing.replay(text, text);
CREATE FUNCTION billing.replay(provider text, event_id text,
    OUT event_id text, OUT status text, OUT detail text)
RETURNS record
VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_replay';
COMMENT ON FUNCTION billing.replay(text, text) IS 'Applies a stored event again (failed ones; applied ones are left alone).';
REVOKE ALL ON FUNCTION billing.replay(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION billing.replay(text, text) TO billing_admin;

CREATE FUNCTION billing.replay(event_id text,
    OUT event_id text, OUT status text, OUT detail text)
RETURNS record
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off AS
$$ SELECT r.* FROM billing.replay('stripe', $1) r $$;
REVOKE ALL ON FUNCTION billing.replay(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION billing.replay(text) TO billing_admin;

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
-- CREATE OR REPLACE keeps add_secret's privileges (sql/roles.sql: none for
-- PUBLIC, EXECUTE for billing_admin); restated so this file says what it relies on.
REVOKE ALL ON FUNCTION billing.add_secret(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION billing.add_secret(text, text) TO billing_admin;

-- billing 0.9.0: verify() as one function, and _grants_now's ACL.
--
-- 0.5.0, 0.6.0 and 0.8.0 each added checks by renaming verify() and wrapping it
-- (_verify_ledger, then _verify_slots, then _verify_entry_ids, each the one before plus
-- its own checks). verify() now holds every check itself, in one query, as
-- sql/operations.sql declares it; the wrappers go. CREATE OR REPLACE keeps verify()'s
-- comment and privileges. Nothing in the schema depends on the wrappers (SQL bodies name
-- functions only as text).
CREATE OR REPLACE FUNCTION billing.verify()
RETURNS TABLE (customer text, check_name text, expected bigint, actual bigint, detail text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
WITH j AS (
    SELECT j.*, lag(j.balance_after, 1, 0::bigint) OVER w AS before,
           lag(j.at) OVER w AS prev_at, row_number() OVER w AS n,
           (SELECT coalesce(sum(d), 0) FROM unnest(j.deltas) d) AS line_sum
      FROM billing.journal j
    WINDOW w AS (PARTITION BY j.customer ORDER BY j.seq)
), lines AS (
    SELECT j.customer, j.kind, l.a, l.d
      FROM billing.journal j, unnest(j.accounts, j.deltas) AS l(a, d)
), last AS (
    SELECT DISTINCT ON (j.customer) j.customer, j.balance_after, j.seq, j.at
      FROM billing.journal j ORDER BY j.customer, j.seq DESC
), borrowed AS (
    SELECT r.customer, r.id, sum(l.x) FILTER (WHERE l.a = r.id) AS x
      FROM billing.reservations r, unnest(r.accounts, r.amounts) AS l(a, x)
     WHERE r.status = 'active' GROUP BY r.customer, r.id
)
-- each entry's amount is the sum of its lines
SELECT j.customer, 'entry_lines', j.amount, j.line_sum, 'entry ' || j.entry_id
  FROM j WHERE j.amount IS DISTINCT FROM j.line_sum
UNION ALL
-- the running balance adds up entry by entry
SELECT j.customer, 'running_balance', j.before + j.amount, j.balance_after, 'entry ' || j.entry_id
  FROM j WHERE j.balance_after IS DISTINCT FROM j.before + j.amount
UNION ALL
-- no gaps in a customer's sequence, time never goes back
SELECT j.customer, 'sequence', j.n, j.seq, 'entry ' || j.entry_id FROM j WHERE j.seq <> j.n
UNION ALL
SELECT j.customer, 'time_order', NULL, NULL, 'entry ' || j.entry_id || ' is earlier than the entry before it'
  FROM j WHERE j.at < j.prev_at
UNION ALL
-- the cached balance and sequence of each customer match the journal
SELECT c.customer, 'customer_balance', coalesce(l.balance_after, 0), c.balance, NULL
  FROM billing.customers c LEFT JOIN last l USING (customer)
 WHERE c.balance <> coalesce(l.balance_after, 0)
UNION ALL
SELECT c.customer, 'customer_seq', coalesce(l.seq, 0), c.seq, NULL
  FROM billing.customers c LEFT JOIN last l USING (customer)
 WHERE c.seq <> coalesce(l.seq, 0)
UNION ALL
-- every grant's remainder is the sum of the journal lines on it
SELECT g.customer, 'grant_remaining', coalesce(s.total, 0), g.remaining, 'grant ' || g.id
  FROM billing._grants_now g
  LEFT JOIN (SELECT lines.customer, lines.a, sum(lines.d) AS total FROM lines GROUP BY 1, 2) s
         ON s.customer = g.customer AND s.a = g.id
 WHERE g.remaining <> coalesce(s.total, 0) OR g.open <> (g.remaining > 0)
UNION ALL
-- the overdraft account
SELECT c.customer, 'overdraft_account', coalesce(s.total, 0), c.od, NULL
  FROM billing.customers c
  LEFT JOIN (SELECT lines.customer, sum(lines.d) AS total FROM lines
              WHERE lines.a = '00000000-0000-0000-0000-000000000000' GROUP BY 1) s USING (customer)
 WHERE c.od <> coalesce(s.total, 0)
UNION ALL
-- what each hold borrowed is on its own account while it is active, and nothing after
SELECT r.customer, 'hold_borrowing', -coalesce(b.x, 0), coalesce(s.total, 0), 'reservation ' || r.id
  FROM billing.reservations r
  LEFT JOIN borrowed b ON b.customer = r.customer AND b.id = r.id
  LEFT JOIN (SELECT lines.customer, lines.a, sum(lines.d) AS total FROM lines GROUP BY 1, 2) s
         ON s.customer = r.customer AND s.a = r.id
 WHERE coalesce(s.total, 0) <> -coalesce(b.x, 0)
UNION ALL
SELECT r.customer, 'hold_amount', r.amount, (SELECT sum(x) FROM unnest(r.amounts) x), 'reservation ' || r.id
  FROM billing.reservations r
 WHERE r.amount <> (SELECT sum(x) FROM unnest(r.amounts) x)
UNION ALL
-- the balance equals its parts: live grants + overdraft account - active borrowing,
-- as of the customer's last entry (expired grants must have been written down)
SELECT c.customer, 'balance_parts',
       coalesce((SELECT sum(g.remaining) FROM billing._grants_now g
                  WHERE g.customer = c.customer AND g.expires_at > c.last_at), 0)
       + c.od - coalesce((SELECT sum(b.x) FROM borrowed b WHERE b.customer = c.customer), 0),
       c.balance, NULL
  FROM billing.customers c
 WHERE c.balance <> coalesce((SELECT sum(g.remaining) FROM billing._grants_now g
                               WHERE g.customer = c.customer AND g.expires_at > c.last_at), 0)
                   + c.od - coalesce((SELECT sum(b.x) FROM borrowed b WHERE b.customer = c.customer), 0)
UNION ALL
SELECT g.customer, 'expired_grant_written_down', 0, g.remaining, 'grant ' || g.id
  FROM billing._grants_now g JOIN billing.customers c USING (customer)
 WHERE g.expires_at <= c.last_at AND g.remaining > 0
UNION ALL
-- refunds never return more than their entry consumed
SELECT r.customer, 'refund_bound', -d.amount, r.total, 'entry ' || d.entry_id
  FROM (SELECT j.customer, j.ref_entry, sum(j.amount) AS total FROM billing.journal j
         WHERE j.kind = 'refund' GROUP BY 1, 2) r
  JOIN billing.journal d ON d.entry_id = r.ref_entry
 WHERE d.kind = 'debit' AND r.total > -d.amount
UNION ALL
-- every transfer has its pair in another account of the same customer: the same
-- credits the other way
SELECT t.customer, 'transfer_pair', -t.amount, p.amount, 'entry ' || t.entry_id
  FROM billing.journal t
  JOIN billing.customers ct ON ct.customer = t.customer
  LEFT JOIN (billing.journal p JOIN billing.customers cp ON cp.customer = p.customer)
         ON p.entry_id = t.ref_entry AND p.kind = 'transfer' AND p.ref_entry = t.entry_id
        AND p.customer <> t.customer
        AND coalesce(cp.slot_of, cp.customer) = coalesce(ct.slot_of, ct.customer)
 WHERE t.kind = 'transfer' AND p.amount IS DISTINCT FROM -t.amount
UNION ALL
-- a mirror holds credits of a grant of its own customer, with that grant's expiry
SELECT m.customer, 'mirror_origin', NULL, NULL, 'grant ' || m.id
  FROM billing.grants m
  JOIN billing.customers c ON c.customer = m.customer
  LEFT JOIN billing.grants o ON o.customer = c.slot_of AND o.id = m.origin
 WHERE m.origin IS NOT NULL AND (o.id IS NULL OR o.expires_at <> m.expires_at)
UNION ALL
-- a customer's pending draw is on an open grant of its own that it leaves credits
SELECT c.customer, 'draw', c.draw, coalesce(g.remaining, 0), 'grant ' || c.draw_grant
  FROM billing.customers c
  LEFT JOIN billing.grants g ON g.customer = c.customer AND g.id = c.draw_grant
 WHERE c.draw <> 0 AND (g.id IS NULL OR NOT g.open OR g.remaining - c.draw <= 0 OR c.draw < 0)
UNION ALL
-- a slotted customer has exactly its slot accounts
SELECT c.customer, 'slot_accounts', c.slots - 1, count(s.customer), NULL
  FROM billing.customers c
  LEFT JOIN billing.customers s ON s.slot_of = c.customer
 WHERE c.slot_of IS NULL
 GROUP BY c.customer, c.slots
HAVING count(s.customer) <> c.slots - 1
UNION ALL
-- a located entry id names its own account's number and its own seq
SELECT j.customer, 'entry_id', j.seq, ('x' || substr(replace(j.entry_id::text, '-', ''), 18, 10))::bit(40)::bigint,
       'entry ' || j.entry_id || ' does not name account ' || c.num || ', seq ' || j.seq
  FROM billing.journal j JOIN billing.customers c ON c.customer = j.customer
 WHERE j.entry_id >= 'ff000000-0000-0000-0000-000000000000'
   AND substr(replace(j.entry_id::text, '-', ''), 1, 12) || substr(replace(j.entry_id::text, '-', ''), 18, 10)
       <> 'ff' || lpad(to_hex(c.num), 10, '0') || lpad(to_hex(j.seq), 10, '0')
UNION ALL
-- the grant the customer row keeps as first in spending order (draw_left) is: it has
-- that remainder, and no other open grant with credits comes before it
SELECT c.customer, 'first_grant', c.draw_left, g.remaining - c.draw, 'grant ' || c.draw_grant
  FROM billing.customers c
  LEFT JOIN billing.grants g ON g.customer = c.customer AND g.id = c.draw_grant AND g.open
 WHERE c.draw_left IS NOT NULL
   AND (g.id IS NULL OR g.remaining - c.draw <> c.draw_left OR c.draw_left <= 0
        OR EXISTS (SELECT FROM billing._grants_now o
                    WHERE o.customer = c.customer AND o.open AND o.remaining > 0 AND o.id <> g.id
                      AND (o.expires_at, -o.priority, o.seq) < (g.expires_at, -g.priority, g.seq)))
UNION ALL
-- an account number names one account
SELECT min(c.customer), 'account_number', 1, count(*), 'number ' || c.num || ' is on ' || string_agg(c.customer, ', ')
  FROM billing.customers c
 GROUP BY c.num
HAVING count(*) > 1
UNION ALL
-- the rows the hot path writes hold what its functions write (no CHECK: sql/ledger.sql)
SELECT r.customer, 'reservation_row', NULL::bigint, r.amount,
       'reservation ' || r.id || ': amount ' || r.amount || ', status ' || coalesce(r.status, 'NULL')
  FROM billing.reservations r
 WHERE NOT (r.amount > 0 AND r.status IN ('active', 'settled', 'released', 'expired'))
UNION ALL
SELECT u.customer, 'usage_row', NULL::bigint, u.credits,
       'usage ' || u.idempotency_key || ': quantity ' || u.quantity || ', credits ' || u.credits
  FROM billing.usage_events u
 WHERE NOT (u.quantity > 0 AND u.credits >= 0)
UNION ALL
SELECT k.customer, 'usage_carry', k.den, k.num,
       'carry of meter ' || k.meter || ' is ' || k.num || '/' || k.den || ', not a fraction below one'
  FROM billing.usage_carry k
 WHERE NOT (k.num >= 0 AND k.den > 0 AND k.num < k.den)
UNION ALL
SELECT e.customer, 'event_status', NULL::bigint, NULL::bigint,
       'event ' || e.provider || ' ' || e.event_id || ' has status ' || coalesce(e.status, 'NULL')
  FROM billing.events e
 WHERE NOT (e.status IN ('applied', 'stale', 'ignored', 'failed'))
UNION ALL
SELECT o.customer, 'outbox_kind', o.id, NULL::bigint, 'outbox row ' || o.id || ' has kind ' || coalesce(o.kind, 'NULL')
  FROM billing.outbox o
 WHERE NOT (o.kind IN ('low_balance', 'subscription_status', 'access_changed', 'event_failed', 'topup_due'))
UNION ALL
-- a period's plan grants add up to what it says it granted, and its allowance stays
-- between its base and its ceiling
SELECT p.customer, 'plan_period', p.granted, coalesce(g.total, 0),
       'subscription ' || p.subscription_id || ', period ending ' || p.period_end || ': granted ' || p.granted
       || ', plan grants ' || coalesce(g.total, 0) || ', allowance ' || p.allowance || ', ceiling ' || p.ceiling
  FROM billing.subscription_periods p
  LEFT JOIN LATERAL (SELECT sum(g.amount)::bigint AS total FROM billing.grants g
                      WHERE g.customer = p.customer AND g.source LIKE 'plan:%' AND g.expires_at = p.period_end
                        AND g.metadata->>'subscription' = p.subscription_id) g ON true
 WHERE p.granted <> coalesce(g.total, 0) OR p.allowance > p.ceiling OR p.base > p.allowance
$$;
DROP FUNCTION billing._verify_entry_ids();
DROP FUNCTION billing._verify_slots();
DROP FUNCTION billing._verify_ledger();

-- A fresh install revokes PUBLIC's rights on every table and view at once
-- (sql/roles.sql); _grants_now (0.5.0, made again by 0.6.0) came after 0.1.0's revoke
-- and had no ACL, which means the same: owner only.
REVOKE ALL ON billing._grants_now FROM PUBLIC;

-- ack_outbox answers false for a row acknowledged before (it answered NULL, while its
-- comment said false).
CREATE OR REPLACE FUNCTION billing.ack_outbox(id bigint)
RETURNS boolean LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off AS $$
    WITH acked AS (
        UPDATE billing.outbox o SET acked_at = pg_catalog.clock_timestamp()
         WHERE o.id OPERATOR(pg_catalog.=) $1 AND o.acked_at IS NULL
        RETURNING 1)
    SELECT EXISTS (SELECT FROM acked)
$$;

-- ---------------------------------------------------------------------------------------
-- billing 0.9.0: ids, keys, names and codes are text COLLATE "C".
--
-- In a database whose collation is not C (en_US.UTF-8, the usual default), every
-- comparison in a B-tree descent on a text key went through strcoll: a debit took 18%
-- more instructions than in a C database (bench/README.md, "0.9.0: the same speed in
-- every locale"). Ids and keys are opaque: they need equality and a stable order, not a
-- linguistic one. Every text column of the tables is now COLLATE "C" but natural text
-- (events.body, events.detail, event_variants.body, inbox.body); a pg_test
-- (src/pg/collation_tests.rs) keeps it so.
--
-- What this section does, and costs:
--   * ALTER COLUMN ... TYPE text COLLATE "C" (the same type) does not rewrite a table:
--     each heap keeps its file and rows. It rebuilds every index over an altered column
--     (in its keys, its expressions or a partial index's predicate: every index of these
--     tables but customers_num, reservations_id, journal_entry_id and outbox's two on
--     its id), re-creates the constraints those indexes carry (primary keys, unique;
--     foreign keys are re-created without being checked again: their equality operator
--     is the same), and drops the altered columns' statistics (hence the ANALYZE at the
--     end). Measured on the bench's data (70,000 journal entries, 10,000 customers,
--     20,000 usage events): 2.2 s, 37 indexes rebuilt, no table rewritten. The journal's
--     and usage_events' indexes are the large ones; the update holds ACCESS EXCLUSIVE
--     locks on these tables until it commits.
--   * A view over such a column, or a trigger naming one (subscription_outbox: UPDATE OF
--     status), refuses ALTER COLUMN TYPE: they are dropped first and made again exactly
--     as a fresh install makes them (definition, comment, privileges).
--   * Statements keep their plans: a parameter or literal (the default collation)
--     compared with a "C" column takes the column's collation, so `customer = $1` still
--     matches the index. Orderings on these columns become byte order in every database,
--     as they were in C databases: the provider order of events (created, then event id;
--     replay_failed's ORDER BY now agrees with the Rust side's sort of a customer's
--     waiting events, which was by bytes), the (created, event id) "moves forward" checks
--     of provider_objects and subscriptions, and billing.usage()'s rows (by meter).

DROP VIEW billing.grant_status;
DROP VIEW billing._grants_now, billing.failed_events, billing.stale_events, billing.event_lag, billing.sync_status,
    billing.low_balances, billing.open_holds;
DROP TRIGGER subscription_outbox ON billing.subscriptions;

ALTER TABLE billing.customers
    ALTER COLUMN customer TYPE text COLLATE "C", ALTER COLUMN access_reason TYPE text COLLATE "C",
    ALTER COLUMN slot_of TYPE text COLLATE "C";
ALTER TABLE billing.grants
    ALTER COLUMN customer TYPE text COLLATE "C", ALTER COLUMN source TYPE text COLLATE "C";
ALTER TABLE billing.reservations
    ALTER COLUMN customer TYPE text COLLATE "C", ALTER COLUMN status TYPE text COLLATE "C";
ALTER TABLE billing.journal
    ALTER COLUMN customer TYPE text COLLATE "C", ALTER COLUMN kind TYPE text COLLATE "C",
    ALTER COLUMN idempotency_key TYPE text COLLATE "C";
ALTER TABLE billing.endpoints
    ALTER COLUMN name TYPE text COLLATE "C", ALTER COLUMN provider TYPE text COLLATE "C";
ALTER TABLE billing.endpoint_secrets
    ALTER COLUMN endpoint TYPE text COLLATE "C", ALTER COLUMN secret TYPE text COLLATE "C";
ALTER TABLE billing.events
    ALTER COLUMN provider TYPE text COLLATE "C", ALTER COLUMN event_id TYPE text COLLATE "C",
    ALTER COLUMN endpoint TYPE text COLLATE "C", ALTER COLUMN type TYPE text COLLATE "C",
    ALTER COLUMN api_version TYPE text COLLATE "C", ALTER COLUMN object_id TYPE text COLLATE "C",
    ALTER COLUMN customer TYPE text COLLATE "C", ALTER COLUMN provider_customer TYPE text COLLATE "C",
    ALTER COLUMN status TYPE text COLLATE "C", ALTER COLUMN via TYPE text COLLATE "C";
ALTER TABLE billing.event_variants
    ALTER COLUMN provider TYPE text COLLATE "C", ALTER COLUMN event_id TYPE text COLLATE "C";
ALTER TABLE billing.inbox
    ALTER COLUMN endpoint TYPE text COLLATE "C";
ALTER TABLE billing.provider_customers
    ALTER COLUMN provider TYPE text COLLATE "C", ALTER COLUMN provider_customer TYPE text COLLATE "C",
    ALTER COLUMN customer TYPE text COLLATE "C";
ALTER TABLE billing.provider_objects
    ALTER COLUMN provider TYPE text COLLATE "C", ALTER COLUMN object_id TYPE text COLLATE "C",
    ALTER COLUMN event_id TYPE text COLLATE "C";
ALTER TABLE billing.purchases
    ALTER COLUMN customer TYPE text COLLATE "C", ALTER COLUMN provider TYPE text COLLATE "C",
    ALTER COLUMN purchase_id TYPE text COLLATE "C", ALTER COLUMN currency TYPE text COLLATE "C";
ALTER TABLE billing.refunds
    ALTER COLUMN provider TYPE text COLLATE "C", ALTER COLUMN refund_id TYPE text COLLATE "C",
    ALTER COLUMN purchase_id TYPE text COLLATE "C";
ALTER TABLE billing.disputes
    ALTER COLUMN provider TYPE text COLLATE "C", ALTER COLUMN dispute_id TYPE text COLLATE "C",
    ALTER COLUMN customer TYPE text COLLATE "C", ALTER COLUMN status TYPE text COLLATE "C";
ALTER TABLE billing.topup_credits
    ALTER COLUMN match TYPE text COLLATE "C";
ALTER TABLE billing.sync_marks
    ALTER COLUMN endpoint TYPE text COLLATE "C";
ALTER TABLE billing.plans
    ALTER COLUMN plan TYPE text COLLATE "C", ALTER COLUMN features TYPE text[] COLLATE "C",
    ALTER COLUMN provider_price TYPE text COLLATE "C";
ALTER TABLE billing.subscriptions
    ALTER COLUMN customer TYPE text COLLATE "C", ALTER COLUMN provider TYPE text COLLATE "C",
    ALTER COLUMN subscription_id TYPE text COLLATE "C", ALTER COLUMN status TYPE text COLLATE "C",
    ALTER COLUMN plan TYPE text COLLATE "C", ALTER COLUMN price_id TYPE text COLLATE "C",
    ALTER COLUMN status_event TYPE text COLLATE "C", ALTER COLUMN plan_event TYPE text COLLATE "C";
ALTER TABLE billing.period_invoices
    ALTER COLUMN customer TYPE text COLLATE "C", ALTER COLUMN subscription_id TYPE text COLLATE "C",
    ALTER COLUMN invoice_id TYPE text COLLATE "C", ALTER COLUMN billing_reason TYPE text COLLATE "C";
ALTER TABLE billing.subscription_periods
    ALTER COLUMN customer TYPE text COLLATE "C", ALTER COLUMN subscription_id TYPE text COLLATE "C";
ALTER TABLE billing.meters
    ALTER COLUMN meter TYPE text COLLATE "C";
ALTER TABLE billing.meter_prices
    ALTER COLUMN meter TYPE text COLLATE "C";
ALTER TABLE billing.usage_carry
    ALTER COLUMN customer TYPE text COLLATE "C", ALTER COLUMN meter TYPE text COLLATE "C";
ALTER TABLE billing.usage_events
    ALTER COLUMN customer TYPE text COLLATE "C", ALTER COLUMN idempotency_key TYPE text COLLATE "C",
    ALTER COLUMN meter TYPE text COLLATE "C";
ALTER TABLE billing.limits
    ALTER COLUMN subject TYPE text COLLATE "C", ALTER COLUMN feature TYPE text COLLATE "C";
ALTER TABLE billing.buckets
    ALTER COLUMN customer TYPE text COLLATE "C", ALTER COLUMN feature TYPE text COLLATE "C";
ALTER TABLE billing.outbox
    ALTER COLUMN customer TYPE text COLLATE "C", ALTER COLUMN kind TYPE text COLLATE "C",
    ALTER COLUMN idempotency_key TYPE text COLLATE "C";
ALTER TABLE billing.auto_topups
    ALTER COLUMN customer TYPE text COLLATE "C", ALTER COLUMN month TYPE text COLLATE "C";

CREATE TRIGGER subscription_outbox AFTER INSERT OR UPDATE OF status ON billing.subscriptions
    FOR EACH ROW EXECUTE FUNCTION billing._subscription_outbox();

-- The views as sql/ledger.sql, sql/webhooks.sql, sql/outbox.sql and sql/operations.sql
-- make them, with their comments; privileges as sql/roles.sql grants them, in its order
-- (nothing for PUBLIC, then each grant).
CREATE VIEW billing._grants_now AS
SELECT g.customer, g.id, g.seq, g.source, g.amount,
       g.remaining - CASE WHEN c.draw_grant = g.id THEN c.draw ELSE 0 END AS remaining,
       g.open, g.expires_at, g.priority, g.metadata, g.entry_id, g.created_at
  FROM billing.grants g JOIN billing.customers c ON c.customer = g.customer;
COMMENT ON VIEW billing._grants_now IS 'billing.grants with remaining as of now (the customer''s pending draw subtracted).';

CREATE VIEW billing.grant_status WITH (security_barrier) AS
SELECT g.customer, g.id AS grant_id, g.source, g.amount AS granted,
       (g.amount::numeric + coalesce(m.refunded, 0) - coalesce(m.expired, 0) - coalesce(m.revoked, 0)
         - coalesce(h.held, 0) - coalesce(m.transferred, 0) - g.remaining)::bigint AS used,
       coalesce(m.refunded, 0) AS refunded,
       coalesce(m.expired, 0) AS expired,
       coalesce(m.revoked, 0) AS revoked,
       coalesce(h.held, 0) AS held,
       g.remaining,
       CASE WHEN g.expires_at = 'infinity' THEN NULL ELSE g.expires_at END AS expires_at,
       g.priority, g.created_at,
       coalesce(m.transferred, 0) AS transferred
  FROM billing._grants_now g
  LEFT JOIN LATERAL (
        SELECT (sum(l.d) FILTER (WHERE j.kind = 'refund'))::bigint AS refunded,
               (-sum(l.d) FILTER (WHERE j.kind = 'expiry'))::bigint AS expired,
               (-sum(l.d) FILTER (WHERE j.kind = 'revocation'))::bigint AS revoked,
               (-sum(l.d) FILTER (WHERE j.kind = 'transfer'))::bigint AS transferred
          FROM billing.journal j, unnest(j.accounts, j.deltas) AS l(a, d)
         WHERE j.customer = g.customer AND l.a = g.id
           AND j.kind IN ('refund', 'expiry', 'revocation', 'transfer')) m ON true
  LEFT JOIN LATERAL (
        SELECT sum(l.x)::bigint AS held
          FROM billing.reservations r, unnest(r.accounts, r.amounts) AS l(a, x)
         WHERE r.customer = g.customer AND r.status = 'active' AND l.a = g.id) h ON true;
COMMENT ON VIEW billing.grant_status IS 'Per grant: granted, used, refunded, expired, revoked, held, remaining.';

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

CREATE VIEW billing.sync_status AS
SELECT e.name AS endpoint, e.provider,
       (SELECT max(v.created) FROM billing.events v WHERE v.endpoint = e.name AND v.via = 'delivery') AS newest_delivered,
       (SELECT max(v.created) FROM billing.events v WHERE v.endpoint = e.name AND v.via = 'fetch') AS newest_fetched,
       (SELECT count(*) FROM billing.events v WHERE v.endpoint = e.name AND v.via = 'delivery') AS delivered,
       (SELECT count(*) FROM billing.events v WHERE v.endpoint = e.name AND v.via = 'fetch') AS fetched,
       (SELECT m.synced_through FROM billing.sync_marks m WHERE m.endpoint = e.name) AS synced_through
  FROM billing.endpoints e;
COMMENT ON VIEW billing.sync_status IS 'Per endpoint: the newest event stored from deliveries and from fetches, how many each path brought, and how far the sync from the provider''s API got.';

CREATE VIEW billing.low_balances AS
SELECT c.customer, t.balance, c.low_balance AS threshold
  FROM billing.customers c,
       LATERAL (SELECT c.balance + CASE WHEN c.slots > 1 THEN
                  (SELECT coalesce(sum(s.balance), 0) FROM generate_series(1, c.slots - 1) k
                     JOIN billing.customers s ON s.customer = c.customer || '#' || k)::bigint
                  ELSE 0 END AS balance) t
 WHERE c.low_balance IS NOT NULL AND c.slot_of IS NULL AND t.balance < c.low_balance;

CREATE VIEW billing.open_holds AS
SELECT r.customer, r.id AS reservation_id, r.amount, r.created_at, r.expires_at
  FROM billing.reservations r WHERE r.status = 'active';

REVOKE ALL ON billing._grants_now, billing.grant_status, billing.failed_events, billing.stale_events, billing.event_lag,
    billing.sync_status, billing.low_balances, billing.open_holds FROM PUBLIC;
GRANT SELECT ON billing.sync_status TO billing_sync;
GRANT SELECT ON billing.grant_status, billing.open_holds, billing.low_balances,
    billing.failed_events, billing.stale_events, billing.event_lag, billing.sync_status
TO billing_reader;
GRANT SELECT ON billing.grant_status TO billing_admin;

-- The statistics of the altered columns were dropped with their old collation.
ANALYZE billing.customers, billing.grants, billing.reservations, billing.journal, billing.endpoints,
    billing.endpoint_secrets, billing.events, billing.event_variants, billing.provider_customers,
    billing.provider_objects, billing.purchases, billing.refunds, billing.disputes,
    billing.topup_credits, billing.sync_marks, billing.plans, billing.subscriptions,
    billing.period_invoices, billing.subscription_periods, billing.meters, billing.meter_prices,
    billing.usage_carry, billing.usage_events, billing.limits, billing.buckets, billing.outbox,
    billing.auto_topups;

-- Batches (issue 21): billing.debit_many and billing.record_usage_many.
CREATE FUNCTION billing.debit_many(customers text[], amounts bigint[], idempotency_keys text[])
RETURNS TABLE (i int, entry_id uuid, balance_after bigint, replayed boolean, sqlstate text, message text)
VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_debit_many';
COMMENT ON FUNCTION billing.debit_many IS 'A batch of debits (at most 10,000), each as billing.debit; one row per item, a refused item with its sqlstate and message.';

CREATE FUNCTION billing.record_usage_many(customers text[], meters text[], quantities bigint[], idempotency_keys text[],
    occurred_at timestamptz[] DEFAULT NULL)
RETURNS TABLE (i int, entry_id uuid, credits bigint, balance_after bigint, replayed boolean, sqlstate text, message text)
VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_record_usage_many';
COMMENT ON FUNCTION billing.record_usage_many IS 'A batch of usages (at most 10,000), each as billing.record_usage; one row per item, a refused item with its sqlstate and message.';

REVOKE ALL ON FUNCTION billing.debit_many(text[], bigint[], text[]),
    billing.record_usage_many(text[], text[], bigint[], text[], timestamptz[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION billing.debit_many(text[], bigint[], text[]),
    billing.record_usage_many(text[], text[], bigint[], text[], timestamptz[]) TO billing_app;
