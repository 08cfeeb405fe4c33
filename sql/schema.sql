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
    open        boolean     NOT NULL,            -- remaining > 0; the spending index covers open grants only
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
