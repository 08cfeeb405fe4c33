-- billing 0.1.0: the frozen install script of release 0.1.0 (the credit ledger). Never edit.
-- billing: tables of the credit ledger.
-- Every per-customer table leads its keys with the customer id (Citus: distribute by
-- customer); nothing on the hot path reads another customer's rows or a global counter.
-- Balances are bigint in the smallest unit. Timestamps 'infinity' mean "never".

CREATE TABLE billing.customers (
    customer        text        NOT NULL PRIMARY KEY CHECK (customer <> ''),
    -- Running balance after the last journal entry. Exact until next_event_at, when
    -- some grant or hold expires; readers then compute past it, writers write it down.
    balance         bigint      NOT NULL DEFAULT 0,
    od              bigint      NOT NULL DEFAULT 0,   -- overdraft account, negative = debt
    overdraft_limit bigint      NOT NULL DEFAULT 0 CHECK (overdraft_limit >= 0),
    frozen          boolean     NOT NULL DEFAULT false,
    seq             bigint      NOT NULL DEFAULT 0,   -- last journal seq of this customer
    last_at         timestamptz NOT NULL DEFAULT '-infinity',
    next_event_at   timestamptz NOT NULL DEFAULT 'infinity',
    created_at      timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 50);  -- updated in place on every debit: keep the updates HOT
COMMENT ON TABLE billing.customers IS 'One row per customer: the lock every balance change takes, and the cached balance.';

CREATE TABLE billing.grants (
    customer    text        NOT NULL REFERENCES billing.customers,
    id          uuid        NOT NULL,
    seq         bigint      NOT NULL,            -- journal seq of its creation: "oldest first"
    source      text        NOT NULL,
    amount      bigint      NOT NULL CHECK (amount > 0),
    remaining   bigint      NOT NULL CHECK (remaining >= 0),
    open        boolean     NOT NULL,            -- remaining > 0; in the index so spent grants are skipped
    expires_at  timestamptz NOT NULL,            -- 'infinity' when it never expires
    priority    int         NOT NULL,
    metadata    jsonb       NOT NULL,
    entry_id    uuid        NOT NULL,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (customer, id)
) WITH (fillfactor = 70);
CREATE INDEX grants_spend_order ON billing.grants (customer, open, expires_at, priority DESC, seq);
COMMENT ON TABLE billing.grants IS 'Credit grants; remaining is what is left, a cache of the journal lines on the grant.';

CREATE TABLE billing.reservations (
    customer          text        NOT NULL,
    id                uuid        NOT NULL,
    amount            bigint      NOT NULL CHECK (amount > 0),
    ttl               interval    NOT NULL,
    status            text        NOT NULL CHECK (status IN ('active', 'settled', 'released', 'expired')),
    expires_at        timestamptz NOT NULL,
    -- where the held credits came from: grant ids, or the reservation's own id for
    -- credits borrowed against the overdraft limit; amounts in allocation order
    accounts          uuid[]      NOT NULL,
    amounts           bigint[]    NOT NULL,
    settled           bigint,
    consumed_accounts uuid[],                    -- a settle's provenance, for refunds
    consumed_amounts  bigint[],
    hold_entry        uuid        NOT NULL,
    end_entry         uuid,
    created_at        timestamptz NOT NULL,
    PRIMARY KEY (customer, id)
);
CREATE UNIQUE INDEX reservations_id ON billing.reservations (id);
CREATE INDEX reservations_active ON billing.reservations (customer, expires_at) WHERE status = 'active';

-- The journal: append-only, one row per change of a balance. accounts/deltas say which
-- accounts moved (a grant id; the nil uuid for the overdraft account; a reservation id
-- for credits a hold borrowed); amount is their sum and balance_after the running sum.
CREATE TABLE billing.journal (
    customer        text        NOT NULL,
    seq             bigint      NOT NULL,
    entry_id        uuid        NOT NULL,
    at              timestamptz NOT NULL,
    kind            text        NOT NULL CHECK (kind IN ('grant', 'debit', 'hold', 'settle', 'release', 'refund', 'expiry', 'revocation')),
    amount          bigint      NOT NULL,
    balance_after   bigint      NOT NULL,
    idempotency_key text,
    grant_id        uuid,
    reservation_id  uuid,
    ref_entry       uuid,                        -- a refund's debit or settle
    accounts        uuid[]      NOT NULL,
    deltas          bigint[]    NOT NULL,
    metadata        jsonb       NOT NULL DEFAULT '{}',
    PRIMARY KEY (customer, seq)
);
CREATE UNIQUE INDEX journal_entry_id ON billing.journal (entry_id);
-- Idempotency keys live with the entry they produced, forever, scoped per customer.
CREATE UNIQUE INDEX journal_idempotency_key ON billing.journal (customer, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX journal_refunds ON billing.journal (customer, ref_entry) WHERE ref_entry IS NOT NULL;
COMMENT ON TABLE billing.journal IS 'Append-only ledger journal; UPDATE, DELETE and TRUNCATE are refused.';

CREATE FUNCTION billing._journal_append_only() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'billing.journal is append-only: % refused', TG_OP
        USING ERRCODE = '42501', HINT = 'Correct a balance with a new entry (billing.grant or billing.debit).';
END $$;
CREATE TRIGGER journal_append_only BEFORE UPDATE OR DELETE ON billing.journal
    FOR EACH ROW EXECUTE FUNCTION billing._journal_append_only();
CREATE TRIGGER journal_no_truncate BEFORE TRUNCATE ON billing.journal
    FOR EACH STATEMENT EXECUTE FUNCTION billing._journal_append_only();

-- pg_dump keeps the data of extension tables only when they are registered.
SELECT pg_catalog.pg_extension_config_dump('billing.customers', '');
SELECT pg_catalog.pg_extension_config_dump('billing.grants', '');
SELECT pg_catalog.pg_extension_config_dump('billing.reservations', '');
SELECT pg_catalog.pg_extension_config_dump('billing.journal', '');
-- billing: the ledger's SQL surface (SPEC section 1). The functions are implemented in
-- Rust (src/ledger/api.rs); each is SECURITY DEFINER with a pinned search_path, and
-- every statement inside names its schema.

CREATE FUNCTION billing.grant(customer text, amount bigint, idempotency_key text,
    source text DEFAULT 'manual', expires_at timestamptz DEFAULT NULL,
    priority int DEFAULT 0, metadata jsonb DEFAULT '{}')
RETURNS uuid VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_grant';
COMMENT ON FUNCTION billing.grant IS 'Adds credits as a grant; returns the grant id. Repays overdraft debt first.';

CREATE FUNCTION billing.debit(customer text, amount bigint, idempotency_key text, metadata jsonb DEFAULT '{}')
RETURNS TABLE (entry_id uuid, balance_after bigint, replayed boolean)
VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp ROWS 1
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_debit';
COMMENT ON FUNCTION billing.debit IS 'Takes credits now, soonest-expiring grants first; BL001 when short, BL002 on a reused key.';

CREATE FUNCTION billing.reserve(customer text, amount bigint, idempotency_key text, ttl interval DEFAULT '15 minutes')
RETURNS uuid VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_reserve';
COMMENT ON FUNCTION billing.reserve IS 'Holds credits for work of unknown cost; returns the reservation id.';

CREATE FUNCTION billing.settle(reservation_id uuid, actual bigint)
RETURNS TABLE (entry_id uuid, balance_after bigint, replayed boolean)
VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp ROWS 1
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_settle';
COMMENT ON FUNCTION billing.settle IS 'Turns a hold into a debit of actual; the rest goes back. Above the hold only if available.';

CREATE FUNCTION billing.extend(reservation_id uuid, ttl interval)
RETURNS timestamptz VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_extend';
COMMENT ON FUNCTION billing.extend IS 'Keeps a hold alive until at least now + ttl; returns the new expiry.';

CREATE FUNCTION billing.release(reservation_id uuid)
RETURNS TABLE (entry_id uuid, balance_after bigint, replayed boolean)
VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp ROWS 1
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_release';
COMMENT ON FUNCTION billing.release IS 'Gives a hold back whole.';

CREATE FUNCTION billing.refund(entry_id uuid, amount bigint DEFAULT NULL, idempotency_key text DEFAULT NULL)
RETURNS TABLE (entry_id uuid, balance_after bigint, replayed boolean)
VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp ROWS 1
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_refund';
COMMENT ON FUNCTION billing.refund IS 'Returns credits of a debit or settle (all, or part) to the grants they came from.';

CREATE FUNCTION billing.balance(customer text)
RETURNS bigint VOLATILE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_balance';
COMMENT ON FUNCTION billing.balance IS 'Spendable credits now: live grants, minus debt, minus active holds.';

CREATE FUNCTION billing.balance_at(customer text, at timestamptz)
RETURNS bigint VOLATILE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_balance_at';
COMMENT ON FUNCTION billing.balance_at IS 'Spendable credits as of an instant, from the journal.';

CREATE FUNCTION billing.set_overdraft(customer text, "limit" bigint)
RETURNS void VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_set_overdraft';
COMMENT ON FUNCTION billing.set_overdraft IS 'How far below zero this customer may go (default 0).';

CREATE FUNCTION billing.set_frozen(customer text, frozen boolean DEFAULT true)
RETURNS void VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_set_frozen';
COMMENT ON FUNCTION billing.set_frozen IS 'Freezes (or unfreezes) a customer: debits and holds are refused with BL004.';

CREATE FUNCTION billing.maintenance(batch int DEFAULT 10000)
RETURNS bigint VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_maintenance';
COMMENT ON FUNCTION billing.maintenance IS 'Writes the journal rows of expired grants and lapsed holds; returns how many. Safe from pg_cron at any interval.';

-- Per grant: where its credits went. granted - used + refunded - expired - revoked - held = remaining.
CREATE VIEW billing.grant_status WITH (security_barrier) AS
SELECT g.customer, g.id AS grant_id, g.source, g.amount AS granted,
       g.amount + coalesce(m.refunded, 0) - coalesce(m.expired, 0) - coalesce(m.revoked, 0)
         - coalesce(h.held, 0) - g.remaining AS used,
       coalesce(m.refunded, 0) AS refunded,
       coalesce(m.expired, 0) AS expired,
       coalesce(m.revoked, 0) AS revoked,
       coalesce(h.held, 0) AS held,
       g.remaining,
       CASE WHEN g.expires_at = 'infinity' THEN NULL ELSE g.expires_at END AS expires_at,
       g.priority, g.created_at
  FROM billing.grants g
  LEFT JOIN LATERAL (
        SELECT (sum(l.d) FILTER (WHERE j.kind = 'refund'))::bigint AS refunded,
               (-sum(l.d) FILTER (WHERE j.kind = 'expiry'))::bigint AS expired,
               (-sum(l.d) FILTER (WHERE j.kind = 'revocation'))::bigint AS revoked
          FROM billing.journal j, unnest(j.accounts, j.deltas) AS l(a, d)
         WHERE j.customer = g.customer AND l.a = g.id
           AND j.kind IN ('refund', 'expiry', 'revocation')) m ON true
  LEFT JOIN LATERAL (
        SELECT sum(l.x)::bigint AS held
          FROM billing.reservations r, unnest(r.accounts, r.amounts) AS l(a, x)
         WHERE r.customer = g.customer AND r.status = 'active' AND l.a = g.id) h ON true;
COMMENT ON VIEW billing.grant_status IS 'Per grant: granted, used, refunded, expired, revoked, held, remaining.';

-- billing.verify(): recomputes every balance and every grant remainder from the journal.
-- One row per inconsistency; none is the healthy answer.
CREATE FUNCTION billing.verify()
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
  FROM billing.grants g
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
       coalesce((SELECT sum(g.remaining) FROM billing.grants g
                  WHERE g.customer = c.customer AND g.expires_at > c.last_at), 0)
       + c.od - coalesce((SELECT sum(b.x) FROM borrowed b WHERE b.customer = c.customer), 0),
       c.balance, NULL
  FROM billing.customers c
 WHERE c.balance <> coalesce((SELECT sum(g.remaining) FROM billing.grants g
                               WHERE g.customer = c.customer AND g.expires_at > c.last_at), 0)
                   + c.od - coalesce((SELECT sum(b.x) FROM borrowed b WHERE b.customer = c.customer), 0)
UNION ALL
SELECT g.customer, 'expired_grant_written_down', 0, g.remaining, 'grant ' || g.id
  FROM billing.grants g JOIN billing.customers c USING (customer)
 WHERE g.expires_at <= c.last_at AND g.remaining > 0
UNION ALL
-- refunds never return more than their entry consumed
SELECT r.customer, 'refund_bound', -d.amount, r.total, 'entry ' || d.entry_id
  FROM (SELECT j.customer, j.ref_entry, sum(j.amount) AS total FROM billing.journal j
         WHERE j.kind = 'refund' GROUP BY 1, 2) r
  JOIN billing.journal d ON d.entry_id = r.ref_entry
 WHERE d.kind = 'debit' AND r.total > -d.amount
$$;
COMMENT ON FUNCTION billing.verify IS 'Recomputes every balance and grant remainder from the journal; one row per inconsistency.';
-- billing: roles and privileges (SPEC section 5). Runs last.
-- Roles are cluster-wide, so they are created only if missing and never dropped by
-- DROP EXTENSION (other databases may use them).
DO $$
DECLARE r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['billing_admin', 'billing_app', 'billing_webhook', 'billing_reader'] LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- another database's CREATE EXTENSION created it just now
            END;
        END IF;
    END LOOP;
END $$;

-- Nothing for PUBLIC: not the schema, not a table, not a function.
REVOKE ALL ON SCHEMA billing FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA billing FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA billing FROM PUBLIC;

GRANT USAGE ON SCHEMA billing TO billing_admin, billing_app, billing_webhook, billing_reader;

-- The application: the ledger functions, nothing else (no table access: every write
-- goes through the functions, which run as the extension owner).
GRANT EXECUTE ON FUNCTION
    billing.grant(text, bigint, text, text, timestamptz, int, jsonb),
    billing.debit(text, bigint, text, jsonb),
    billing.reserve(text, bigint, text, interval),
    billing.settle(uuid, bigint),
    billing.extend(uuid, interval),
    billing.release(uuid),
    billing.refund(uuid, bigint, text),
    billing.balance(text),
    billing.balance_at(text, timestamptz)
TO billing_app;

-- Readers: the journal and the views, and the consistency check.
GRANT SELECT ON billing.journal, billing.grant_status TO billing_reader;
GRANT EXECUTE ON FUNCTION billing.verify(), billing.balance(text), billing.balance_at(text, timestamptz) TO billing_reader;

-- Administrators: everything the others can, plus policy and maintenance.
GRANT billing_app, billing_reader TO billing_admin;
GRANT EXECUTE ON FUNCTION
    billing.set_overdraft(text, bigint),
    billing.set_frozen(text, boolean),
    billing.maintenance(int)
TO billing_admin;
GRANT SELECT ON ALL TABLES IN SCHEMA billing TO billing_admin;
