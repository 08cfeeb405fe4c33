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
--   9. The access answer kept on the customer's row (billing.customers.sub_counts_until,
--      sub_allowed_until, sub_plan; billing._sub_kept, billing._access_kept), checked by
--      verify() (access_kept); the current-subscription index ends with the id.
--  10. Events rows stay whole up to 3 KB (toast_tuple_target): a Stripe body no longer
--      goes to the TOAST table.
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

-- Events rows stay whole up to 3 KB once compressed, where the default sent most bodies
-- to the TOAST table (sql/webhooks.sql). Rows written before stay where they are.
ALTER TABLE billing.events SET (toast_tuple_target = 3072);

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
-- (verify() itself is replaced once, at the end of this script, as sql/operations.sql declares it.)
DROP FUNCTION billing._verify_entry_ids();
DROP FUNCTION billing._verify_slots();
DROP FUNCTION billing._verify_ledger();

-- A fresh install revokes PUBLIC's rights on every table and view at once
-- (sql/roles.sql); _grants_now (0.5.0, made again by 0.6.0) came after 0.1.0's revoke
-- and had no ACL, which means the same: owner only.
REVOKE ALL ON billing._grants_now FROM PUBLIC;

-- ack_outbox answers false for a row acknowledged before (it answered NULL, while its
-- comment said false).
-- (ack_outbox's one definition, PL/pgSQL for Citus, is below.)

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

-- The outbox's wake-up keeps no session state (a session lock stayed on a pooled server
-- connection behind a transaction-mode pooler): an empty claim writes a lease in
-- billing.outbox_waiters, and the code that writes outbox rows wakes consumers itself, so
-- the triggers go (on Citus a trigger runs on the shard). The subscription status row is
-- written by the webhook code, with the trigger's payload.
DROP TRIGGER outbox_wake ON billing.outbox;
DROP TRIGGER subscription_outbox ON billing.subscriptions;
DROP FUNCTION billing._outbox_wake();
DROP FUNCTION billing._subscription_outbox();
DROP FUNCTION billing.claim_outbox(int, interval);
DROP FUNCTION billing._outbox_wait();
DROP FUNCTION billing._outbox_awake();

CREATE TABLE billing.outbox_waiters (
    consumer text COLLATE "C" PRIMARY KEY,
    until    timestamptz      NOT NULL
);
-- The writers' check runs in functions with enable_seqscan = off: without an index its
-- plan costs 1e10 and is JIT-compiled on every call (~13 ms).
CREATE INDEX outbox_waiters_until ON billing.outbox_waiters (until);

CREATE FUNCTION billing._outbox_wait(fresh boolean) RETURNS boolean VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_outbox_wait_lease';

CREATE FUNCTION billing.claim_outbox(n int DEFAULT 100, lease interval DEFAULT '1 minute',
                                     wait interval DEFAULT '1 minute', consumer text DEFAULT '')
RETURNS SETOF billing.outbox LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    me text COLLATE "C" := coalesce(claim_outbox.consumer, '');
    was timestamptz;
BEGIN
    RETURN QUERY SELECT * FROM billing._claim_outbox(claim_outbox.n, claim_outbox.lease);
    IF NOT FOUND AND claim_outbox.wait OPERATOR(pg_catalog.>) '0'::interval THEN
        SELECT w.until INTO was FROM billing.outbox_waiters w WHERE w.consumer OPERATOR(pg_catalog.=) me;
        INSERT INTO billing.outbox_waiters AS w (consumer, until)
        VALUES (me, pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) claim_outbox.wait)
        ON CONFLICT ON CONSTRAINT outbox_waiters_pkey DO UPDATE SET until = EXCLUDED.until;
        DELETE FROM billing.outbox_waiters w
         WHERE w.consumer IN (SELECT x.consumer FROM billing.outbox_waiters x
                               WHERE x.until OPERATOR(pg_catalog.<) pg_catalog.clock_timestamp()
                                 AND x.consumer OPERATOR(pg_catalog.<>) me
                               FOR UPDATE SKIP LOCKED);
        IF NOT billing._outbox_wait(was IS NULL OR was OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp()) THEN
            RETURN;
        END IF;
        RETURN QUERY SELECT * FROM billing._claim_outbox(claim_outbox.n, claim_outbox.lease);
        IF NOT FOUND THEN
            RETURN;
        END IF;
    END IF;
    -- busy: writers need not notify this consumer until its next empty claim (a write
    -- only if it has a lease: on Citus the table is a reference table, written on every node)
    IF FOUND AND EXISTS (SELECT FROM billing.outbox_waiters w WHERE w.consumer OPERATOR(pg_catalog.=) me) THEN
        DELETE FROM billing.outbox_waiters w WHERE w.consumer OPERATOR(pg_catalog.=) me;
    END IF;
END $$;
COMMENT ON FUNCTION billing.claim_outbox IS 'Claims up to n unacknowledged rows for a lease; rows claimed by others are skipped, not waited for. Empty: writers send NOTIFY billing until this consumer''s wait lease ends (wait, default 1 minute; consumer names the lease) or one of its claims returns rows.';

REVOKE ALL ON billing.outbox_waiters FROM PUBLIC;
GRANT SELECT ON billing.outbox_waiters TO billing_admin;
REVOKE ALL ON FUNCTION billing._outbox_wait(boolean), billing.claim_outbox(int, interval, interval, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION billing.claim_outbox(int, interval, interval, text) TO billing_app;

-- verify() reports journal entries dated after now (a test clock, now transaction-scoped,
-- could be left set on a pooled connection and date a customer's entries in the future).
CREATE FUNCTION billing._clock_now() RETURNS timestamptz VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_clock_now';
REVOKE ALL ON FUNCTION billing._clock_now() FROM PUBLIC;

-- (verify() reads it: the one definition at the end of this script.)

-- Scale-out on Citus (sql/cluster.sql). Every unique key leads with the customer, or lives
-- in a table keyed by the provider's id (purchases, their refunds, provider customers);
-- customer numbers carry the node's Citus group above bit 32.
ALTER SEQUENCE billing.customer_num MAXVALUE 4294967295;
CREATE FUNCTION billing._node_id(seq regclass, bits int) RETURNS bigint
VOLATILE PARALLEL UNSAFE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_node_id';
COMMENT ON FUNCTION billing._node_id IS 'The next value of this node''s sequence in the low bits, the node''s Citus group above them: ids unique across nodes.';
ALTER TABLE billing.customers ALTER COLUMN num SET DEFAULT billing._node_id('billing.customer_num', 32);
DROP INDEX billing.reservations_id;
-- Holds' ids carry their account's number from 0.9.0 (see sql/ledger.sql): the index
-- keeps the older ones only.
CREATE INDEX reservations_id ON billing.reservations (id)
 WHERE id < 'ff000000-0000-0000-0000-000000000000';
DROP INDEX billing.journal_entry_id;
CREATE INDEX journal_entry_id ON billing.journal (entry_id)
 WHERE entry_id < 'ff000000-0000-0000-0000-000000000000';
DROP INDEX billing.subscriptions_provider_id;
CREATE INDEX subscriptions_provider_id ON billing.subscriptions (provider, subscription_id);
ALTER TABLE billing.provider_customers DROP CONSTRAINT provider_customers_customer_fkey;
DROP INDEX billing.purchases_provider_id;
ALTER TABLE billing.purchases DROP CONSTRAINT purchases_customer_fkey, DROP CONSTRAINT purchases_pkey,
    ADD PRIMARY KEY (provider, purchase_id);
ALTER TABLE billing.refunds DROP CONSTRAINT refunds_pkey, ADD PRIMARY KEY (provider, purchase_id, refund_id);
ALTER TABLE billing.disputes DROP CONSTRAINT disputes_pkey, ADD PRIMARY KEY (customer, provider, dispute_id);

CREATE FUNCTION billing.settle(customer text, reservation_id uuid, actual bigint,
    OUT entry_id uuid, OUT balance_after bigint, OUT replayed boolean)
RETURNS record
VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_settle_for';
COMMENT ON FUNCTION billing.settle(text, uuid, bigint) IS 'billing.settle(reservation_id, actual) of one customer''s reservation.';

CREATE FUNCTION billing.extend(customer text, reservation_id uuid, ttl interval)
RETURNS timestamptz VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_extend_for';
COMMENT ON FUNCTION billing.extend(text, uuid, interval) IS 'billing.extend(reservation_id, ttl) of one customer''s reservation.';

CREATE FUNCTION billing.release(customer text, reservation_id uuid,
    OUT entry_id uuid, OUT balance_after bigint, OUT replayed boolean)
RETURNS record
VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_release_for';
COMMENT ON FUNCTION billing.release(text, uuid) IS 'billing.release(reservation_id) of one customer''s reservation.';

-- (No defaults: with them, refund($1, $2, $3) of untyped parameters, as drivers send
-- them, would match both forms and be refused as ambiguous.)
CREATE FUNCTION billing.refund(customer text, entry_id uuid, amount bigint, idempotency_key text,
    OUT entry_id uuid, OUT balance_after bigint, OUT replayed boolean)
RETURNS record
VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_refund_for';
COMMENT ON FUNCTION billing.refund(text, uuid, bigint, text) IS 'billing.refund(entry_id, amount, idempotency_key) of one customer''s entry.';

CREATE FUNCTION billing.distribute() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t text;
    f text;
    n bigint;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
        RAISE EXCEPTION 'billing.distribute() needs Citus, and this database has no citus extension'
            USING ERRCODE = '55000',
                  HINT = 'Load citus (shared_preload_libraries), CREATE EXTENSION citus on every node and add the workers, then call billing.distribute() on the coordinator.';
    END IF;
    IF (SELECT groupid FROM pg_catalog.pg_dist_local_group) <> 0 THEN
        RAISE EXCEPTION 'billing.distribute() runs on the coordinator (this node is a worker)' USING ERRCODE = '55000';
    END IF;
    -- (A count: Citus cannot plan EXISTS over a distributed table as a PL/pgSQL expression.)
    n := (SELECT count(*) FROM billing.customers WHERE slots > 1);
    IF n > 0 THEN
        RAISE EXCEPTION 'billing.distribute(): % customers have slots (billing.set_slots); a slot account is a customer of its own, on another shard', n
            USING ERRCODE = '55000';
    END IF;
    -- The journal's append-only triggers run on its shards; the catalog tables' foreign
    -- keys between reference tables stay, without local copies on the coordinator.
    SET LOCAL citus.enable_unsafe_triggers = on;
    SET LOCAL citus.enable_local_reference_table_foreign_keys = off;

    FOREACH t IN ARRAY ARRAY['endpoints', 'endpoint_secrets', 'sync_marks', 'topup_credits', 'plans', 'meters',
                             'meter_prices', 'limits', 'outbox', 'outbox_waiters'] LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_dist_partition WHERE logicalrelid = ('billing.' || t)::regclass) THEN
            PERFORM create_reference_table(('billing.' || t)::regclass);
        END IF;
    END LOOP;

    IF NOT EXISTS (SELECT FROM pg_catalog.pg_dist_partition WHERE logicalrelid = 'billing.customers'::regclass) THEN
        PERFORM create_distributed_table('billing.customers', 'customer');
    END IF;
    FOREACH t IN ARRAY ARRAY['grants', 'reservations', 'journal', 'subscriptions', 'period_invoices',
                             'subscription_periods', 'disputes', 'usage_carry', 'usage_events', 'buckets',
                             'auto_topups'] LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_dist_partition WHERE logicalrelid = ('billing.' || t)::regclass) THEN
            PERFORM create_distributed_table(('billing.' || t)::regclass, 'customer', colocate_with => 'billing.customers');
        END IF;
    END LOOP;

    FOREACH t IN ARRAY ARRAY['events:event_id:', 'event_variants:event_id:billing.events', 'provider_objects:object_id:',
                             'provider_customers:provider_customer:', 'purchases:purchase_id:',
                             'refunds:purchase_id:billing.purchases'] LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_dist_partition
                        WHERE logicalrelid = ('billing.' || split_part(t, ':', 1))::regclass) THEN
            PERFORM create_distributed_table(('billing.' || split_part(t, ':', 1))::regclass, split_part(t, ':', 2),
                colocate_with => coalesce(nullif(split_part(t, ':', 3), ''), 'default'));
        END IF;
    END LOOP;

    -- Delegated by their first argument, the customer.
    FOREACH f IN ARRAY ARRAY[
        'billing.grant(text, bigint, text, text, timestamptz, int, jsonb)',
        'billing.debit(text, bigint, text, jsonb)',
        'billing.reserve(text, bigint, text, interval)',
        'billing.settle(text, uuid, bigint)',
        'billing.extend(text, uuid, interval)',
        'billing.release(text, uuid)',
        'billing.refund(text, uuid, bigint, text)',
        'billing.balance(text)',
        'billing.balance_at(text, timestamptz)',
        'billing.set_overdraft(text, bigint)',
        'billing.access(text, text)',
        'billing.can_access(text, text)',
        'billing.charge(text, text, bigint, text)',
        'billing.set_frozen(text, boolean)',
        'billing.record_usage(text, text, bigint, text, timestamptz, uuid)',
        'billing.usage(text, timestamptz, timestamptz)',
        'billing.set_low_balance(text, bigint)',
        'billing.set_auto_topup(text, bigint, bigint, int, int)'] LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_dist_object
                        WHERE classid = 'pg_catalog.pg_proc'::regclass AND objid = f::regprocedure
                          AND distribution_argument_index IS NOT NULL) THEN
            PERFORM create_distributed_function(f::regprocedure, '$1', colocate_with => 'billing.customers');
        END IF;
    END LOOP;
END $$;
COMMENT ON FUNCTION billing.distribute IS 'On a Citus coordinator: distributes the billing tables by customer (or provider id), makes the catalog reference tables and delegates the customer functions. Idempotent.';

REVOKE ALL ON FUNCTION billing._node_id(regclass, int), billing.settle(text, uuid, bigint), billing.extend(text, uuid, interval),
    billing.release(text, uuid), billing.refund(text, uuid, bigint, text), billing.distribute() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION billing.settle(text, uuid, bigint), billing.extend(text, uuid, interval),
    billing.release(text, uuid), billing.refund(text, uuid, bigint, text)
TO billing_app;

-- Outbox ids unique across nodes (billing._node_id), in place of the identity.
ALTER TABLE billing.outbox ALTER COLUMN id DROP IDENTITY;
CREATE SEQUENCE billing.outbox_id MAXVALUE 281474976710655;
SELECT pg_catalog.setval('billing.outbox_id', coalesce(max(id), 0) + 1, false) FROM billing.outbox;
ALTER TABLE billing.outbox ALTER COLUMN id SET DEFAULT billing._node_id('billing.outbox_id', 48);
ALTER SEQUENCE billing.outbox_id OWNED BY billing.outbox.id;
SELECT pg_catalog.pg_extension_config_dump('billing.outbox_id', '');

-- verify(): the per-customer checks over one set of tables, per shard group on Citus.
-- billing.verify(): recomputes every balance and every grant remainder from the journal,
-- and checks what the tables' constraints do not (sql/ledger.sql says why they are few).
-- One row per inconsistency; none is the healthy answer.
--
-- The checks of one customer's rows run over one set of tables (billing._verify_tables):
-- billing's own on one server; on Citus, each shard group's on the worker that holds it
-- (billing._verify_shard, through run_command_on_shards), where they are plain local
-- tables, so the one query plans as it does on one server. The checks across customers
-- (account numbers, events, the outbox) run as distributed queries.
CREATE FUNCTION billing._verify_tables(customers regclass, grants regclass, reservations regclass, journal regclass,
    usage_events regclass, usage_carry regclass, subscription_periods regclass)
RETURNS TABLE (customer text, check_name text, expected bigint, actual bigint, detail text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
BEGIN
    RETURN QUERY EXECUTE format($q$
SELECT v.customer::text, v.check_name::text, v.expected::bigint, v.actual::bigint, v.detail::text FROM (
WITH gn AS (
    SELECT g.customer, g.id, g.seq, g.source, g.amount,
           g.remaining - CASE WHEN c.draw_grant = g.id THEN c.draw ELSE 0 END AS remaining,
           g.open, g.expires_at, g.priority, g.metadata
      FROM %2$s g JOIN %1$s c ON c.customer = g.customer
), j AS (
    SELECT j.*, lag(j.balance_after, 1, 0::bigint) OVER w AS before,
           lag(j.at) OVER w AS prev_at, row_number() OVER w AS n,
           (SELECT coalesce(sum(d), 0) FROM unnest(j.deltas) d) AS line_sum
      FROM %4$s j
    WINDOW w AS (PARTITION BY j.customer ORDER BY j.seq)
), lines AS (
    SELECT j.customer, j.kind, l.a, l.d
      FROM %4$s j, unnest(j.accounts, j.deltas) AS l(a, d)
), last AS (
    SELECT DISTINCT ON (j.customer) j.customer, j.balance_after, j.seq, j.at
      FROM %4$s j ORDER BY j.customer, j.seq DESC
), borrowed AS (
    SELECT r.customer, r.id, sum(l.x) FILTER (WHERE l.a = r.id) AS x
      FROM %3$s r, unnest(r.accounts, r.amounts) AS l(a, x)
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
-- and no entry is dated after now (as a test clock left on a pooled connection would write)
SELECT j.customer, 'future_entry', NULL, NULL, 'entry ' || j.entry_id || ' is dated ' || j.at || ', after now'
  FROM %4$s j WHERE j.at > (SELECT billing._clock_now())
UNION ALL
-- the cached balance and sequence of each customer match the journal
SELECT c.customer, 'customer_balance', coalesce(l.balance_after, 0), c.balance, NULL
  FROM %1$s c LEFT JOIN last l USING (customer)
 WHERE c.balance <> coalesce(l.balance_after, 0)
UNION ALL
SELECT c.customer, 'customer_seq', coalesce(l.seq, 0), c.seq, NULL
  FROM %1$s c LEFT JOIN last l USING (customer)
 WHERE c.seq <> coalesce(l.seq, 0)
UNION ALL
-- every grant's remainder is the sum of the journal lines on it
SELECT g.customer, 'grant_remaining', coalesce(s.total, 0), g.remaining, 'grant ' || g.id
  FROM gn g
  LEFT JOIN (SELECT lines.customer, lines.a, sum(lines.d) AS total FROM lines GROUP BY 1, 2) s
         ON s.customer = g.customer AND s.a = g.id
 WHERE g.remaining <> coalesce(s.total, 0) OR g.open <> (g.remaining > 0)
UNION ALL
-- the overdraft account
SELECT c.customer, 'overdraft_account', coalesce(s.total, 0), c.od, NULL
  FROM %1$s c
  LEFT JOIN (SELECT lines.customer, sum(lines.d) AS total FROM lines
              WHERE lines.a = '00000000-0000-0000-0000-000000000000' GROUP BY 1) s USING (customer)
 WHERE c.od <> coalesce(s.total, 0)
UNION ALL
-- what each hold borrowed is on its own account while it is active, and nothing after
SELECT r.customer, 'hold_borrowing', -coalesce(b.x, 0), coalesce(s.total, 0), 'reservation ' || r.id
  FROM %3$s r
  LEFT JOIN borrowed b ON b.customer = r.customer AND b.id = r.id
  LEFT JOIN (SELECT lines.customer, lines.a, sum(lines.d) AS total FROM lines GROUP BY 1, 2) s
         ON s.customer = r.customer AND s.a = r.id
 WHERE coalesce(s.total, 0) <> -coalesce(b.x, 0)
UNION ALL
SELECT r.customer, 'hold_amount', r.amount, (SELECT sum(x) FROM unnest(r.amounts) x), 'reservation ' || r.id
  FROM %3$s r
 WHERE r.amount <> (SELECT sum(x) FROM unnest(r.amounts) x)
UNION ALL
-- the balance equals its parts: live grants + overdraft account - active borrowing,
-- as of the customer's last entry (expired grants must have been written down)
SELECT c.customer, 'balance_parts',
       coalesce((SELECT sum(g.remaining) FROM gn g
                  WHERE g.customer = c.customer AND g.expires_at > c.last_at), 0)
       + c.od - coalesce((SELECT sum(b.x) FROM borrowed b WHERE b.customer = c.customer), 0),
       c.balance, NULL
  FROM %1$s c
 WHERE c.balance <> coalesce((SELECT sum(g.remaining) FROM gn g
                               WHERE g.customer = c.customer AND g.expires_at > c.last_at), 0)
                   + c.od - coalesce((SELECT sum(b.x) FROM borrowed b WHERE b.customer = c.customer), 0)
UNION ALL
SELECT g.customer, 'expired_grant_written_down', 0, g.remaining, 'grant ' || g.id
  FROM gn g JOIN %1$s c USING (customer)
 WHERE g.expires_at <= c.last_at AND g.remaining > 0
UNION ALL
-- refunds never return more than their entry consumed
SELECT r.customer, 'refund_bound', -d.amount, r.total, 'entry ' || d.entry_id
  FROM (SELECT j.customer, j.ref_entry, sum(j.amount) AS total FROM %4$s j
         WHERE j.kind = 'refund' GROUP BY 1, 2) r
  JOIN %4$s d ON d.customer = r.customer AND d.entry_id = r.ref_entry
 WHERE d.kind = 'debit' AND r.total > -d.amount
UNION ALL
-- every transfer has its pair in another account of the same customer: the same
-- credits the other way
SELECT t.customer, 'transfer_pair', -t.amount, p.amount, 'entry ' || t.entry_id
  FROM %4$s t
  JOIN %1$s ct ON ct.customer = t.customer
  LEFT JOIN (%4$s p JOIN %1$s cp ON cp.customer = p.customer)
         ON p.entry_id = t.ref_entry AND p.kind = 'transfer' AND p.ref_entry = t.entry_id
        AND p.customer <> t.customer
        AND coalesce(cp.slot_of, cp.customer) = coalesce(ct.slot_of, ct.customer)
 WHERE t.kind = 'transfer' AND p.amount IS DISTINCT FROM -t.amount
UNION ALL
-- a mirror holds credits of a grant of its own customer, with that grant's expiry
SELECT m.customer, 'mirror_origin', NULL, NULL, 'grant ' || m.id
  FROM %2$s m
  JOIN %1$s c ON c.customer = m.customer
  LEFT JOIN %2$s o ON o.customer = c.slot_of AND o.id = m.origin
 WHERE m.origin IS NOT NULL AND (o.id IS NULL OR o.expires_at <> m.expires_at)
UNION ALL
-- a customer's pending draw is on an open grant of its own that it leaves credits
SELECT c.customer, 'draw', c.draw, coalesce(g.remaining, 0), 'grant ' || c.draw_grant
  FROM %1$s c
  LEFT JOIN %2$s g ON g.customer = c.customer AND g.id = c.draw_grant
 WHERE c.draw <> 0 AND (g.id IS NULL OR NOT g.open OR g.remaining - c.draw <= 0 OR c.draw < 0)
UNION ALL
-- a slotted customer has exactly its slot accounts
SELECT c.customer, 'slot_accounts', c.slots - 1, count(s.customer), NULL
  FROM %1$s c
  LEFT JOIN %1$s s ON s.slot_of = c.customer
 WHERE c.slot_of IS NULL
 GROUP BY c.customer, c.slots
HAVING count(s.customer) <> c.slots - 1
UNION ALL
-- a located entry id names its own account's number and its own seq
SELECT j.customer, 'entry_id', j.seq, ('x' || substr(replace(j.entry_id::text, '-', ''), 18, 10))::bit(40)::bigint,
       'entry ' || j.entry_id || ' does not name account ' || c.num || ', seq ' || j.seq
  FROM %4$s j JOIN %1$s c ON c.customer = j.customer
 WHERE j.entry_id >= 'ff000000-0000-0000-0000-000000000000'
   AND substr(replace(j.entry_id::text, '-', ''), 1, 12) || substr(replace(j.entry_id::text, '-', ''), 18, 10)
       <> 'ff' || lpad(to_hex(c.num), 10, '0') || lpad(to_hex(j.seq), 10, '0')
UNION ALL
-- the grant the customer row keeps as first in spending order (draw_left) is: it has
-- that remainder, and no other open grant with credits comes before it
SELECT c.customer, 'first_grant', c.draw_left, g.remaining - c.draw, 'grant ' || c.draw_grant
  FROM %1$s c
  LEFT JOIN %2$s g ON g.customer = c.customer AND g.id = c.draw_grant AND g.open
 WHERE c.draw_left IS NOT NULL
   AND (g.id IS NULL OR g.remaining - c.draw <> c.draw_left OR c.draw_left <= 0
        OR EXISTS (SELECT FROM gn o
                    WHERE o.customer = c.customer AND o.open AND o.remaining > 0 AND o.id <> g.id
                      AND (o.expires_at, -o.priority, o.seq) < (g.expires_at, -g.priority, g.seq)))
UNION ALL
-- the rows the hot path writes hold what its functions write (no CHECK: sql/ledger.sql)
SELECT r.customer, 'reservation_row', NULL::bigint, r.amount,
       'reservation ' || r.id || ': amount ' || r.amount || ', status ' || coalesce(r.status, 'NULL')
  FROM %3$s r
 WHERE NOT (r.amount > 0 AND r.status IN ('active', 'settled', 'released', 'expired'))
UNION ALL
SELECT u.customer, 'usage_row', NULL::bigint, u.credits,
       'usage ' || u.idempotency_key || ': quantity ' || u.quantity || ', credits ' || u.credits
  FROM %5$s u
 WHERE NOT (u.quantity > 0 AND u.credits >= 0)
UNION ALL
SELECT k.customer, 'usage_carry', k.den, k.num,
       'carry of meter ' || k.meter || ' is ' || k.num || '/' || k.den || ', not a fraction below one'
  FROM %6$s k
 WHERE NOT (k.num >= 0 AND k.den > 0 AND k.num < k.den)
UNION ALL
-- a period's plan grants add up to what it says it granted, and its allowance stays
-- between its base and its ceiling
SELECT p.customer, 'plan_period', p.granted, coalesce(g.total, 0),
       'subscription ' || p.subscription_id || ', period ending ' || p.period_end || ': granted ' || p.granted
       || ', plan grants ' || coalesce(g.total, 0) || ', allowance ' || p.allowance || ', ceiling ' || p.ceiling
  FROM %7$s p
  LEFT JOIN LATERAL (SELECT sum(g.amount)::bigint AS total FROM %2$s g
                      WHERE g.customer = p.customer AND g.source LIKE 'plan:%%' AND g.expires_at = p.period_end
                        AND g.metadata->>'subscription' = p.subscription_id) g ON true
 WHERE p.granted <> coalesce(g.total, 0) OR p.allowance > p.ceiling OR p.base > p.allowance
) v(customer, check_name, expected, actual, detail)
$q$, customers, grants, reservations, journal, usage_events, usage_carry, subscription_periods);
END $f$;
COMMENT ON FUNCTION billing._verify_tables IS 'The per-customer checks of billing.verify() over the given tables (billing''s own, or one shard group''s).';

-- On a Citus worker: the checks of the shard group of the customers shard given.
CREATE FUNCTION billing._verify_shard(customers_shard regclass)
RETURNS TABLE (customer text, check_name text, expected bigint, actual bigint, detail text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
DECLARE
    shard regclass[];
BEGIN
    EXECUTE $q$
        SELECT array_agg(format('billing.%I', t || '_' || s.shardid)::regclass ORDER BY k)
          FROM unnest(ARRAY['customers', 'grants', 'reservations', 'journal', 'usage_events', 'usage_carry',
                            'subscription_periods']) WITH ORDINALITY AS x(t, k)
          JOIN pg_catalog.pg_dist_shard s ON s.logicalrelid = ('billing.' || x.t)::regclass
         WHERE s.shardminvalue = (SELECT shardminvalue FROM pg_catalog.pg_dist_shard
                                   WHERE shardid = substring($1::text FROM '_([0-9]+)$')::bigint)$q$
    INTO shard USING customers_shard;
    RETURN QUERY SELECT * FROM billing._verify_tables(shard[1], shard[2], shard[3], shard[4], shard[5], shard[6], shard[7]);
END $f$;
COMMENT ON FUNCTION billing._verify_shard IS 'billing._verify_tables over one shard group (Citus; called by billing.verify on the worker holding it).';

-- (verify() runs these per shard group on Citus: the one definition at the end of this script.)
REVOKE ALL ON FUNCTION billing._verify_tables(regclass, regclass, regclass, regclass, regclass, regclass, regclass),
    billing._verify_shard(regclass) FROM PUBLIC;

-- SQL functions whose parameters Citus cannot plan over its tables, now PL/pgSQL.
CREATE OR REPLACE FUNCTION billing._claim_outbox(n int DEFAULT 100, lease interval DEFAULT '1 minute')
RETURNS SETOF billing.outbox LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t timestamptz := pg_catalog.clock_timestamp();  -- a value: Citus refuses volatile functions in an UPDATE
BEGIN
    RETURN QUERY
    UPDATE billing.outbox o SET claimed_until = t OPERATOR(pg_catalog.+) $2,
                                attempts = o.attempts OPERATOR(pg_catalog.+) 1
     WHERE o.id IN (SELECT p.id FROM billing.outbox p
                     WHERE p.acked_at IS NULL
                       AND (p.claimed_until IS NULL OR p.claimed_until OPERATOR(pg_catalog.<) t)
                     ORDER BY p.id LIMIT $1 FOR UPDATE SKIP LOCKED)
    RETURNING o.*;
END $$;
CREATE OR REPLACE FUNCTION billing.ack_outbox(id bigint)
RETURNS boolean LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off AS $$
DECLARE
    t timestamptz := pg_catalog.clock_timestamp();
BEGIN
    UPDATE billing.outbox o SET acked_at = t
     WHERE o.id OPERATOR(pg_catalog.=) $1 AND o.acked_at IS NULL;
    RETURN FOUND;
END $$;
CREATE OR REPLACE FUNCTION billing.entry(entry_id uuid) RETURNS SETOF billing.journal
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- (PL/pgSQL: Citus cannot plan an SQL function's parameters over its tables.)
    RETURN QUERY
    SELECT j.* FROM billing.customers c JOIN billing.journal j ON j.customer = c.customer
     WHERE $1 >= 'ff000000-0000-0000-0000-000000000000'::uuid
       AND c.num = ('x' || substr(replace($1::text, '-', ''), 3, 10))::bit(40)::bigint
       AND j.seq = ('x' || substr(replace($1::text, '-', ''), 18, 10))::bit(40)::bigint
       AND j.entry_id = $1
    UNION ALL
    SELECT j.* FROM billing.journal j
     WHERE j.entry_id = $1 AND j.entry_id < 'ff000000-0000-0000-0000-000000000000'::uuid;
END $$;

-- sync_status as joins (Citus cannot plan its correlated subqueries over distributed events).
CREATE OR REPLACE VIEW billing.sync_status AS
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

-- low_balances without a lateral join over slot names (Citus plans this one).
-- (The slots' sums joined by slot_of: a plan Citus can make, where slot accounts would
-- be on other shards.)
CREATE OR REPLACE VIEW billing.low_balances AS
SELECT c.customer, c.balance + coalesce(s.balance, 0) AS balance, c.low_balance AS threshold
  FROM billing.customers c
  LEFT JOIN (SELECT x.slot_of, sum(x.balance)::bigint AS balance FROM billing.customers x
              WHERE x.slot_of IS NOT NULL GROUP BY x.slot_of) s ON s.slot_of = c.customer
 WHERE c.low_balance IS NOT NULL AND c.slot_of IS NULL AND c.balance + coalesce(s.balance, 0) < c.low_balance;

-- Batches (issue 21): billing.debit_many and billing.record_usage_many.
-- The slotted customers alone: a batch asks which of its customers are slotted, one probe
-- each of this (almost always empty) index rather than of the primary key.
CREATE INDEX customers_slotted ON billing.customers (customer) WHERE slots > 1;
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

-- The access answer kept on the customer's row (issue 21): can_access reads one row.
-- The columns after the last (the install's order), then filled for every customer with
-- a subscription; the ties of the chosen subscription broken by its id everywhere.
ALTER TABLE billing.customers
    ADD COLUMN sub_counts_until timestamptz NOT NULL DEFAULT '-infinity',
    ADD COLUMN sub_allowed_until timestamptz NOT NULL DEFAULT '-infinity',
    ADD COLUMN sub_plan text COLLATE "C";
DROP INDEX billing.subscriptions_current;
CREATE INDEX subscriptions_current ON billing.subscriptions
    (customer, (status IN ('canceled', 'incomplete_expired')), (coalesce(paid_through, current_period_end)) DESC NULLS LAST,
     subscription_id);

-- The access answer kept on the customer's row (billing.customers.sub_counts_until,
-- sub_allowed_until, sub_plan; src/access/decide.rs, kept): {counts_until, allowed_until}
-- of one subscription, NULL status for none.
CREATE FUNCTION billing._sub_kept(status text, paid_through timestamptz, period_end timestamptz,
    cancel_at_period_end boolean, trial_end timestamptz, grace_us bigint)
RETURNS timestamptz[] IMMUTABLE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_sub_kept';
COMMENT ON FUNCTION billing._sub_kept IS 'The instants until which a subscription counts and allows access ({counts_until, allowed_until}).';

-- What each customer with a subscription should keep: its chosen subscription (access's
-- order, src/access/api.rs inputs_sql!) and the answer it gives. Per customer on Citus:
-- DISTINCT ON the distribution column, the plans a reference table.
CREATE VIEW billing._access_kept AS
SELECT s.customer, s.k[1] AS counts_until, s.k[2] AS allowed_until, s.plan
  FROM (SELECT DISTINCT ON (s.customer) s.customer, s.plan,
               billing._sub_kept(s.status, s.paid_through, s.current_period_end, s.cancel_at_period_end, s.trial_end,
                                 (extract(epoch FROM coalesce(p.grace, '3 days')) * 1000000)::int8) AS k
          FROM billing.subscriptions s LEFT JOIN billing.plans p ON p.plan = s.plan
         ORDER BY s.customer, s.status IN ('canceled', 'incomplete_expired'),
                  coalesce(s.paid_through, s.current_period_end) DESC NULLS LAST, s.subscription_id) s;
COMMENT ON VIEW billing._access_kept IS 'The access answer each customer with a subscription should keep on its row (billing.verify compares).';

REVOKE ALL ON FUNCTION billing._sub_kept(text, timestamptz, timestamptz, boolean, timestamptz, bigint) FROM PUBLIC;
REVOKE ALL ON billing._access_kept FROM PUBLIC;

CREATE OR REPLACE FUNCTION billing.define_plan(plan text, features text[], period_credits bigint DEFAULT 0,
    grace interval DEFAULT '3 days', provider_price text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    was interval;
BEGIN
    IF plan IS NULL OR plan = '' THEN RAISE EXCEPTION 'plan name must not be empty' USING ERRCODE = '22023'; END IF;
    IF period_credits IS NULL OR period_credits < 0 THEN
        RAISE EXCEPTION 'period_credits of plan "%" must be zero or positive', plan USING ERRCODE = '22023';
    END IF;
    IF grace IS NULL OR grace < '0'::interval THEN RAISE EXCEPTION 'grace of plan "%" must not be negative', plan USING ERRCODE = '22023'; END IF;
    SELECT p.grace INTO was FROM billing.plans p WHERE p.plan = define_plan.plan FOR UPDATE;
    INSERT INTO billing.plans AS p (plan, features, period_credits, grace, provider_price)
    VALUES (plan, coalesce(features, '{}'), period_credits, grace, provider_price)
    ON CONFLICT ON CONSTRAINT plans_pkey DO UPDATE
       SET features = EXCLUDED.features, period_credits = EXCLUDED.period_credits,
           grace = EXCLUDED.grace, provider_price = EXCLUDED.provider_price;
    -- The grace is part of the answer kept on the subscribers' rows (an undefined plan's
    -- is 3 days); the features are read from the plan at each check.
    IF coalesce(was, '3 days') IS DISTINCT FROM define_plan.grace THEN
        UPDATE billing.customers c SET sub_counts_until = k.counts_until, sub_allowed_until = k.allowed_until
          FROM billing._access_kept k
         WHERE c.sub_plan = define_plan.plan AND k.customer = c.customer
           AND (c.sub_counts_until, c.sub_allowed_until) IS DISTINCT FROM (k.counts_until, k.allowed_until);
    END IF;
END $$;

CREATE OR REPLACE FUNCTION billing.verify()
RETURNS TABLE (customer text, check_name text, expected bigint, actual bigint, detail text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
    distributed boolean := false;
BEGIN
    IF to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL THEN
        EXECUTE $q$SELECT count(*) > 0 FROM pg_catalog.pg_dist_partition WHERE logicalrelid = 'billing.customers'::regclass$q$
            INTO distributed;
    END IF;
    IF distributed THEN
        FOR r IN EXECUTE $q$SELECT shardid, success, result FROM run_command_on_shards('billing.customers',
                   $c$SELECT coalesce(jsonb_agg(v), '[]')::text FROM billing._verify_shard('%s') v$c$)$q$ LOOP
            IF NOT r.success THEN
                RAISE EXCEPTION 'billing.verify(): shard % could not be checked: %', r.shardid, r.result;
            END IF;
            RETURN QUERY SELECT x.customer, x.check_name, x.expected, x.actual, x.detail
                FROM jsonb_to_recordset(r.result::jsonb)
                  AS x(customer text, check_name text, expected bigint, actual bigint, detail text);
        END LOOP;
    ELSE
        RETURN QUERY SELECT * FROM billing._verify_tables('billing.customers', 'billing.grants', 'billing.reservations',
            'billing.journal', 'billing.usage_events', 'billing.usage_carry', 'billing.subscription_periods');
    END IF;
    RETURN QUERY
-- an account number names one account
SELECT min(c.customer), 'account_number', 1, count(*), 'number ' || c.num || ' is on ' || string_agg(c.customer, ', ')
  FROM billing.customers c
 GROUP BY c.num
HAVING count(*) > 1
UNION ALL
SELECT e.customer, 'event_status', NULL::bigint, NULL::bigint,
       'event ' || e.provider || ' ' || e.event_id || ' has status ' || coalesce(e.status, 'NULL')
  FROM billing.events e
 WHERE NOT (e.status IN ('applied', 'stale', 'ignored', 'failed'))
UNION ALL
SELECT o.customer, 'outbox_kind', o.id, NULL::bigint, 'outbox row ' || o.id || ' has kind ' || coalesce(o.kind, 'NULL')
  FROM billing.outbox o
 WHERE NOT (o.kind IN ('low_balance', 'subscription_status', 'access_changed', 'event_failed', 'topup_due'));
    RETURN QUERY
-- the access answer kept on each customer's row is the one its subscriptions give
-- (a distributed query on Citus: the join is on the customer, co-located)
SELECT c.customer::text, 'access_kept'::text, NULL::bigint, NULL::bigint,
       format('kept: counts until %s, allows until %s, plan %s; its subscriptions say: %s, %s, plan %s',
              c.sub_counts_until, c.sub_allowed_until, coalesce(c.sub_plan, 'NULL'),
              coalesce(k.counts_until, '-infinity'), coalesce(k.allowed_until, '-infinity'), coalesce(k.plan, 'NULL'))
  FROM billing.customers c LEFT JOIN billing._access_kept k ON k.customer = c.customer
 WHERE (c.sub_counts_until, c.sub_allowed_until, c.sub_plan)
       IS DISTINCT FROM (coalesce(k.counts_until, '-infinity'), coalesce(k.allowed_until, '-infinity'), k.plan);
END $$;

UPDATE billing.customers c SET sub_counts_until = k.counts_until, sub_allowed_until = k.allowed_until, sub_plan = k.plan
  FROM billing._access_kept k
 WHERE k.customer = c.customer;
