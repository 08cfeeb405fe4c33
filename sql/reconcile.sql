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
-- The newest event per endpoint and path, without a scan (the sync tool starts there).
CREATE INDEX events_endpoint_newest ON billing.events (endpoint, via, created);

CREATE FUNCTION billing.ingest_fetched(endpoint text, body text,
    OUT event_id text, OUT status text, OUT detail text)
RETURNS record VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_ingest_fetched';
COMMENT ON FUNCTION billing.ingest_fetched IS 'Stores once and applies a Stripe event fetched from the provider''s API (unsigned): as a delivery would, a duplicate of one.';

CREATE VIEW billing.sync_status AS
SELECT e.name AS endpoint, e.provider,
       (SELECT max(v.created) FROM billing.events v WHERE v.endpoint = e.name AND v.via = 'delivery') AS newest_delivered,
       (SELECT max(v.created) FROM billing.events v WHERE v.endpoint = e.name AND v.via = 'fetch') AS newest_fetched,
       (SELECT count(*) FROM billing.events v WHERE v.endpoint = e.name AND v.via = 'delivery') AS delivered,
       (SELECT count(*) FROM billing.events v WHERE v.endpoint = e.name AND v.via = 'fetch') AS fetched
  FROM billing.endpoints e;
COMMENT ON VIEW billing.sync_status IS 'Per endpoint: the newest event stored from deliveries and from fetches, and how many each path brought.';

REVOKE ALL ON FUNCTION billing.ingest_fetched(text, text) FROM PUBLIC;
REVOKE ALL ON billing.sync_status FROM PUBLIC;
GRANT EXECUTE ON FUNCTION billing.ingest_fetched(text, text) TO billing_sync;
GRANT SELECT ON billing.sync_status TO billing_sync, billing_reader;
