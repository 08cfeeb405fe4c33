-- billing 0.9.0: every one-row function returns one composite (SPEC, top).
--
-- Until 0.8.0 the functions that answer one row were declared RETURNS TABLE (...) ROWS 1:
-- a set, so `coalesce((billing.record_usage(...)).credits, 0)` failed with 0A000
-- (set-returning function in COALESCE). They now return a single composite value through
-- OUT parameters (RETURNS record, not SETOF), which works in every place a value does and
-- still reads as a row in FROM: `SELECT * FROM billing.debit(...)`, `LATERAL
-- billing.replay(...)`, `SELECT (billing.debit(...)).balance_after`, PL/pgSQL
-- `SELECT * INTO`. The Rust entry points answer a heap tuple of the declared row type
-- (src/one_row.rs).
--
-- A return type cannot be changed in place: each function is dropped and created again
-- with everything else it had: name, arguments and defaults, column names and types, the
-- attributes and SET clauses (enable_seqscan = off, sql/hot_path.sql), its comment, and
-- its privileges (sql/privileges*.sql: nothing for PUBLIC, EXECUTE for the same roles).
-- Nothing in the schema depends on them (SQL bodies name them only as text).
-- replay_failed() keeps returning a set (one row per failed event); its body reads
-- billing.replay(provider, event_id) in FROM, which takes the composite as it took the row.

-- ---- the ledger (sql/ledger.sql, sql/privileges.sql) ----

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

-- ---- access and metering (sql/access.sql, sql/privileges_access.sql) ----

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

-- ---- webhooks (sql/webhook.sql, sql/privileges_webhook.sql) ----

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
