-- billing: the transactional outbox, low-balance notes and auto top-up (SPEC section 5;
-- src/access/outbox.rs).
--
-- Rows are written in the same transaction as the change that causes them. Consumers
-- claim with billing.claim_outbox(n) (a lease, FOR UPDATE SKIP LOCKED) and acknowledge
-- with billing.ack_outbox(id).
--
-- NOTIFY billing goes out only while a consumer waits: a notifying transaction holds a
-- cluster-wide lock through its commit's WAL flush, so every notifying commit runs alone
-- (with an outbox row for about every other webhook event, that lock cost ingest ~30% of
-- its rate under 8 clients). A consumer whose claim_outbox comes back empty writes a
-- lease in billing.outbox_waiters; writers notify while an unexpired lease exists. No
-- trigger and no session state: the Rust code that writes an outbox row wakes the
-- consumers itself (src/access/outbox.rs).
-- Row ids: this node's count in the low 48 bits, its Citus group above (billing._node_id),
-- so rows written on different nodes of a cluster never share an id.
CREATE SEQUENCE billing.outbox_id MAXVALUE 281474976710655;
CREATE TABLE billing.outbox (
    id              bigint           NOT NULL DEFAULT billing._node_id('billing.outbox_id', 48) PRIMARY KEY,
    customer        text COLLATE "C",
    kind            text COLLATE "C" NOT NULL,  -- low_balance, subscription_status, access_changed, event_failed, topup_due
    payload         jsonb            NOT NULL DEFAULT '{}',
    idempotency_key text COLLATE "C",
    created_at      timestamptz      NOT NULL DEFAULT now(),
    claimed_until   timestamptz,
    attempts        int              NOT NULL DEFAULT 0,
    acked_at        timestamptz
);
ALTER SEQUENCE billing.outbox_id OWNED BY billing.outbox.id;
CREATE INDEX outbox_pending ON billing.outbox (id) WHERE acked_at IS NULL;

-- Consumers waiting for a NOTIFY billing: one lease per consumer name, written by its
-- empty claim, ended by a claim that returns rows or when until passes. Not dumped: a
-- lease means nothing to another cluster.
CREATE TABLE billing.outbox_waiters (
    consumer text COLLATE "C" PRIMARY KEY,
    until    timestamptz      NOT NULL
);
-- The writers' check runs in functions with enable_seqscan = off: without an index its
-- plan costs 1e10 and is JIT-compiled on every call (~13 ms).
CREATE INDEX outbox_waiters_until ON billing.outbox_waiters (until);

-- The thresholds themselves are on the customer row (customers.low_balance,
-- topup_below, sql/ledger.sql); this is the auto top-up's policy and its count.
CREATE TABLE billing.auto_topups (
    customer     text COLLATE "C" PRIMARY KEY REFERENCES billing.customers,
    threshold    bigint           NOT NULL,
    amount       bigint           NOT NULL CHECK (amount > 0),
    monthly_cap  int              NOT NULL CHECK (monthly_cap >= 0),
    max_failures int              NOT NULL CHECK (max_failures >= 0),
    month        text COLLATE "C" NOT NULL DEFAULT '',
    this_month   int              NOT NULL DEFAULT 0,
    failures     int              NOT NULL DEFAULT 0
);

SELECT pg_catalog.pg_extension_config_dump('billing.outbox', '');
SELECT pg_catalog.pg_extension_config_dump('billing.outbox_id', '');
SELECT pg_catalog.pg_extension_config_dump('billing.auto_topups', '');

CREATE FUNCTION billing.set_low_balance(customer text, threshold bigint)
RETURNS void VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_set_low_balance';
COMMENT ON FUNCTION billing.set_low_balance IS 'An outbox row (low_balance) each time the balance crosses below the threshold; NULL turns it off.';

CREATE FUNCTION billing.set_auto_topup(customer text, threshold bigint, amount bigint, monthly_cap int, max_failures int)
RETURNS void VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_set_auto_topup';
COMMENT ON FUNCTION billing.set_auto_topup IS 'A topup_due outbox row, with a deterministic idempotency key, when the balance crosses below the threshold.';

CREATE FUNCTION billing.report_topup(customer text, idempotency_key text, succeeded boolean)
RETURNS void VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_report_topup';
COMMENT ON FUNCTION billing.report_topup IS 'What the provider call of a topup_due row did; a failure asks again until max_failures.';

-- PL/pgSQL, not SQL: Citus cannot plan an SQL function's parameters over its tables.
CREATE FUNCTION billing._claim_outbox(n int DEFAULT 100, lease interval DEFAULT '1 minute')
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
COMMENT ON FUNCTION billing._claim_outbox IS 'The claim of billing.claim_outbox, without the wake-up.';

CREATE FUNCTION billing._outbox_wait(fresh boolean) RETURNS boolean VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_outbox_wait_lease';

-- Empty: write the lease, wait for the writers that may have missed it to commit, then
-- claim once more (each statement of a READ COMMITTED transaction sees what committed
-- before it began). Expired leases of other consumers go (SKIP LOCKED: two consumers
-- never wait for each other here).
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

CREATE FUNCTION billing.ack_outbox(id bigint)
RETURNS boolean LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off AS $$
DECLARE
    t timestamptz := pg_catalog.clock_timestamp();
BEGIN
    UPDATE billing.outbox o SET acked_at = t
     WHERE o.id OPERATOR(pg_catalog.=) $1 AND o.acked_at IS NULL;
    RETURN FOUND;
END $$;
COMMENT ON FUNCTION billing.ack_outbox IS 'Marks a row done; false if it was already acknowledged.';

-- Customers below their low-balance threshold; a slotted customer's balance is the sum
-- of its accounts.
-- (The slots' sums joined by slot_of: a plan Citus can make, where slot accounts would
-- be on other shards.)
CREATE VIEW billing.low_balances AS
SELECT c.customer, c.balance + coalesce(s.balance, 0) AS balance, c.low_balance AS threshold
  FROM billing.customers c
  LEFT JOIN (SELECT x.slot_of, sum(x.balance)::bigint AS balance FROM billing.customers x
              WHERE x.slot_of IS NOT NULL GROUP BY x.slot_of) s ON s.slot_of = c.customer
 WHERE c.low_balance IS NOT NULL AND c.slot_of IS NULL AND c.balance + coalesce(s.balance, 0) < c.low_balance;
