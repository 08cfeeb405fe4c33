-- billing 0.7.0: NOTIFY billing only while a consumer waits (src/access/outbox.rs).
--
-- A notifying transaction holds a cluster-wide lock through its commit's WAL flush, so
-- every notifying commit ran alone: with an outbox row for about every other webhook
-- event, that lock cost ingest ~30% of its rate under 8 clients. Now a consumer whose
-- claim_outbox comes back empty holds a session lock that makes writers notify, until a
-- claim returns rows again; while every consumer is busy claiming, writers notify nobody.
-- The trigger is per row now: the statement trigger fired (and notified) for an INSERT
-- ... SELECT that wrote no row, as the access note's does for most applied events.
DROP TRIGGER outbox_notify ON billing.outbox;
DROP FUNCTION billing._outbox_notify();
CREATE FUNCTION billing._outbox_wake() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_outbox_wake';
CREATE TRIGGER outbox_wake AFTER INSERT ON billing.outbox
    FOR EACH ROW EXECUTE FUNCTION billing._outbox_wake();

CREATE FUNCTION billing._outbox_wait() RETURNS boolean VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_outbox_wait';
CREATE FUNCTION billing._outbox_awake() RETURNS void VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_outbox_awake';

-- The claim itself is 0.3.0's function, kept under another name (not written again).
ALTER FUNCTION billing.claim_outbox(int, interval) RENAME TO _claim_outbox;
REVOKE ALL ON FUNCTION billing._claim_outbox(int, interval) FROM PUBLIC, billing_app;
COMMENT ON FUNCTION billing._claim_outbox IS 'The claim of billing.claim_outbox, without the wake-up.';

-- Empty: wait for the writers that did not notify to commit, then claim once more (each
-- statement of a READ COMMITTED transaction sees what committed before it began).
CREATE FUNCTION billing.claim_outbox(n int DEFAULT 100, lease interval DEFAULT '1 minute')
RETURNS SETOF billing.outbox LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY SELECT * FROM billing._claim_outbox(n, lease);
    IF NOT FOUND THEN
        IF NOT billing._outbox_wait() THEN
            RETURN;
        END IF;
        RETURN QUERY SELECT * FROM billing._claim_outbox(n, lease);
    END IF;
    IF FOUND THEN
        PERFORM billing._outbox_awake();
    END IF;
END $$;
COMMENT ON FUNCTION billing.claim_outbox IS 'Claims up to n unacknowledged rows for a lease; rows claimed by others are skipped, not waited for. Empty: NOTIFY billing wakes this session when a row is written.';

REVOKE ALL ON FUNCTION billing._outbox_wake(), billing._outbox_wait(), billing._outbox_awake(),
    billing.claim_outbox(int, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION billing.claim_outbox(int, interval) TO billing_app;
