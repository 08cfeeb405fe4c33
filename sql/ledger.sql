-- billing: the credit ledger (SPEC section 1): customers, grants, holds, the journal, and
-- the functions that move credits.
--
-- Every per-customer table leads its keys with the customer id (Citus: distribute by
-- customer); nothing on the hot path reads another customer's rows or a global counter.
-- Balances are bigint in the smallest unit. Timestamps 'infinity' mean "never".
--
-- The functions are implemented in Rust (src/ledger/api.rs); each is SECURITY DEFINER
-- with a pinned search_path, and every statement inside names its schema.
--
-- A function that answers one row (debit, settle, release, refund here; access, charge,
-- record_usage, ingest, replay elsewhere) returns one composite through OUT parameters
-- (RETURNS record, not a set): it works in every place a value does, e.g.
-- `coalesce((billing.record_usage(...)).credits, 0)`, and still reads as a row in FROM
-- (`SELECT * FROM billing.debit(...)`, `LATERAL billing.replay(...)`). The Rust entry
-- points answer a heap tuple of the declared row type (src/pg/one_row.rs).
--
-- SET enable_seqscan = off, on every function of the hot path (here and in the other
-- files): every statement they run is a point lookup or a short range on an index that
-- leads with the customer (or the event id), and its plan is prepared once per backend
-- and kept (src/spi.rs). A plan made while a table is nearly empty (a fresh install,
-- just after ANALYZE saw a few rows) may pick a sequential scan, which is cheapest on one
-- page and is then kept while the table grows: the cost of each call grows with the
-- table (measured: a top-up's ingest read every purchase row, 0.17x the floor). With
-- seqscan disabled while they plan, they always choose the index path; tables with no
-- usable index (a one-row plans table) are still scanned. verify(), maintenance() and
-- the views read whole tables and keep the default.
--
-- Few CHECK constraints on the tables the hot path writes: Postgres builds every CHECK
-- of a table from its stored text at each INSERT or UPDATE statement (ExecRelCheck:
-- stringToNode, then ExecPrepareExpr), whatever the row: about 6 us of a debit's 49 us
-- inside the server, ~60,000 instructions of a reserve or a settle. The columns left
-- unchecked are written only by the extension's functions, from values the Rust side
-- makes or validates first: kinds and statuses are literals of the code (ledger/rules.rs
-- Kind), customer ids are checked non-empty on every call, amounts and quantities are
-- checked positive, set_overdraft refuses a negative limit. The money invariant,
-- grants.remaining >= 0, stays a constraint; verify() (sql/operations.sql) reports a
-- row that breaks any of the others.

-- Ids, keys, names and codes (customer ids, idempotency keys, provider ids, endpoint,
-- plan, meter and feature names, statuses and kinds), here and in every other file, are
-- text COLLATE "C": they are opaque, compared for equality and kept in B-trees, and a
-- database whose collation is not C (en_US.UTF-8) would otherwise compare them with
-- strcoll in every index descent (a debit took 18% more instructions). Their order is
-- byte order in every database. Natural text (event bodies, details) keeps the
-- database's collation; src/pg/collation_tests.rs lists it, and fails on a new text
-- column that is neither.

-- The account's number, carried by the ids of its journal entries (customers.num):
-- billing._node_id(), this node's count in the low 32 bits (hence the maximum) and, on
-- Citus, the node's group id above them, so numbers made on different nodes never meet.
CREATE SEQUENCE billing.customer_num MAXVALUE 4294967295;
CREATE FUNCTION billing._node_id(seq regclass, bits int) RETURNS bigint
VOLATILE PARALLEL UNSAFE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_node_id';
COMMENT ON FUNCTION billing._node_id IS 'The next value of this node''s sequence in the low bits, the node''s Citus group above them: ids unique across nodes.';

CREATE TABLE billing.customers (
    customer        text COLLATE "C" NOT NULL PRIMARY KEY,
    od              bigint           NOT NULL DEFAULT 0,   -- overdraft account, negative = debt
    overdraft_limit bigint           NOT NULL DEFAULT 0,
    frozen          boolean          NOT NULL DEFAULT false,  -- set_frozen, an open dispute
    next_event_at   timestamptz      NOT NULL DEFAULT 'infinity',
    created_at      timestamptz      NOT NULL DEFAULT now(),
    -- Low-balance and auto-top-up thresholds (sql/outbox.sql) live on the row the ledger
    -- locks anyway, so noticing a crossing costs no extra read on the debit path.
    low_balance     bigint,
    low_notified    boolean          NOT NULL DEFAULT false,
    topup_below     bigint,
    topup_notified  boolean          NOT NULL DEFAULT false,
    access_reason   text COLLATE "C",                       -- the last access reason noted (access_changed)
    draw_grant      uuid,                                   -- the grant debits drew from since its row was written
    slots           int              NOT NULL DEFAULT 1,   -- accounts of a slotted customer, on its own row
    slot_of         text COLLATE "C",                       -- on a slot account: the customer it belongs to
    -- The columns a debit changes, together at the end of the row: a HOT update logs the
    -- bytes of the new row between the longest prefix and suffix it shares with the old
    -- one (log_heap_update), so a debit logs little more than these (num never changes).
    -- balance: the running balance after the last journal entry. Exact until
    -- next_event_at, when some grant or hold expires; readers then compute past it,
    -- writers write it down.
    balance         bigint           NOT NULL DEFAULT 0,
    seq             bigint           NOT NULL DEFAULT 0,   -- last journal seq of this customer
    last_at         timestamptz      NOT NULL DEFAULT '-infinity',
    draw            bigint           NOT NULL DEFAULT 0,   -- drawn from draw_grant, not yet subtracted from its remaining
    draw_left       bigint,
    num             bigint           NOT NULL DEFAULT billing._node_id('billing.customer_num', 32),
    -- The access answer the customer's subscriptions give, kept here by the writes that
    -- change it (webhook events, plans' grace) so can_access reads this row alone
    -- (src/access/decide.rs, Kept): its chosen subscription counts while now <
    -- sub_counts_until and allows while now < sub_allowed_until ('-infinity': never);
    -- sub_plan is that subscription's plan, for its features. After the columns a debit
    -- changes: a debit's update leaves them in the shared suffix.
    sub_counts_until  timestamptz    NOT NULL DEFAULT '-infinity',
    sub_allowed_until timestamptz    NOT NULL DEFAULT '-infinity',
    sub_plan          text COLLATE "C"
) WITH (fillfactor = 50);  -- updated in place on every debit: keep the updates HOT
-- The sequence and the column refer to each other: it can only be owned once both exist.
ALTER SEQUENCE billing.customer_num OWNED BY billing.customers.num;
COMMENT ON TABLE billing.customers IS 'One row per customer: the lock every balance change takes, and the cached balance.';
COMMENT ON COLUMN billing.customers.slots IS 'How many accounts hold this customer''s credits (1 = just this row; see billing.set_slots).';
COMMENT ON COLUMN billing.customers.slot_of IS 'Set on the slot accounts of a slotted customer: the customer they belong to.';
COMMENT ON COLUMN billing.customers.draw IS 'Credits drawn from grant draw_grant and not yet written down on its row (grants.remaining - draw is what it has left).';
COMMENT ON COLUMN billing.customers.draw_left IS 'When set: draw_grant is the first grant in spending order with credits left, and this is its remainder (less the pending draw).';
COMMENT ON COLUMN billing.customers.num IS 'The account''s number, carried by the ids of its journal entries.';
-- Not unique: an index that does not lead with the customer could not be unique under a
-- distributed (Citus) customers table. Lookups also match the whole entry id, and
-- verify() reports a number used twice.
CREATE INDEX customers_num ON billing.customers (num);
-- The slotted customers alone: a batch asks which of its customers are slotted, one probe
-- each of this (almost always empty) index rather than of the primary key.
CREATE INDEX customers_slotted ON billing.customers (customer) WHERE slots > 1;

-- A debit's draw on one grant is kept on the customer row: a debit that takes from one
-- grant only, leaving it credits, does not update the grant's row. The customer row keeps
-- the credits drawn from that grant since its row was last written (draw_grant, draw),
-- and the next call that touches another grant, or empties this one, writes the draw
-- down: one row written per debit instead of two (one page touched: less WAL, fewer
-- full-page images). billing._grants_now (and grant_status) subtract the draw.
--
-- The first grant in spending order, on the customer row: draw_left keeps draw_grant's
-- remainder whenever it is known to be the first in spending order with credits left. A
-- debit or reserve it covers reads no grant at all (reading the live grants was about a
-- fifth of a debit's read). Any call that moves another grant's credits, adds a grant,
-- or empties this one clears it (NULL), and the next spend reads the grants and sets it
-- again. verify() checks it.
--
-- Slotted balances for hot customers (opt-in, billing.set_slots): every balance change
-- of a customer holds the customer's lock until its commit record is flushed, so one
-- customer's debits form a chain: at most one per flush, whatever the client count. A
-- slotted customer spreads its credits over n accounts (its own, slot 0, and n - 1 slot
-- accounts named '<customer>#<k>'), each a ledger of its own with its own lock, journal
-- sequence and grants; n debits can then commit in one flush. A spending call goes to the
-- slot its idempotency key hashes to, so a retried key always meets the entry it made;
-- when that slot is short, the call takes every slot's lock, gathers all credits back
-- into slot 0, runs there (with the overdraft limit), and spreads what is left again.
-- Credits move as 'transfer' journal entries, in pairs (one in each account, each naming
-- the other in ref_entry), from a grant to its mirror in the slot (grants.origin) and
-- back; a mirror keeps its grant's expiry and priority.

CREATE TABLE billing.grants (
    customer    text COLLATE "C" NOT NULL REFERENCES billing.customers,
    id          uuid             NOT NULL,
    seq         bigint           NOT NULL,            -- journal seq of its creation: "oldest first"
    source      text COLLATE "C" NOT NULL,
    amount      bigint           NOT NULL,
    remaining   bigint           NOT NULL CHECK (remaining >= 0),
    open        boolean          NOT NULL,            -- remaining > 0; the spending index covers open grants only
    expires_at  timestamptz      NOT NULL,            -- 'infinity' when it never expires
    priority    int              NOT NULL,
    metadata    jsonb            NOT NULL,
    entry_id    uuid             NOT NULL,
    created_at  timestamptz      NOT NULL,
    origin      uuid,                                 -- on a slot's mirror: the grant it mirrors
    PRIMARY KEY (customer, id)
) WITH (fillfactor = 70);
-- The spending order over open grants only: the spending reads all ask for open grants,
-- and a customer's spent grants (every monthly allowance it ever had) do not sit in the
-- index they scan on every debit. Updates of a remainder go by the primary key.
CREATE INDEX grants_spend_order ON billing.grants (customer, expires_at, priority DESC, seq) WHERE open;
COMMENT ON TABLE billing.grants IS 'Credit grants; remaining is what is left, a cache of the journal lines on the grant.';
COMMENT ON COLUMN billing.grants.remaining IS 'Credits left as of this row''s last write; less customers.draw for the customer''s draw_grant (see billing.grant_status).';
COMMENT ON COLUMN billing.grants.origin IS 'On a slot account''s mirror grant: the customer''s grant whose credits it holds.';

CREATE TABLE billing.reservations (
    customer          text COLLATE "C" NOT NULL,
    id                uuid             NOT NULL,
    amount            bigint           NOT NULL,
    ttl               interval         NOT NULL,
    status            text COLLATE "C" NOT NULL,      -- active, settled, released, expired
    expires_at        timestamptz      NOT NULL,
    -- where the held credits came from: grant ids, or the reservation's own id for
    -- credits borrowed against the overdraft limit; amounts in allocation order
    accounts          uuid[]           NOT NULL,
    amounts           bigint[]         NOT NULL,
    settled           bigint,
    consumed_accounts uuid[],                         -- a settle's provenance, for refunds
    consumed_amounts  bigint[],
    hold_entry        uuid             NOT NULL,
    end_entry         uuid,
    created_at        timestamptz      NOT NULL,
    PRIMARY KEY (customer, id)
);
-- The id-only forms (settle(reservation_id, ...)) find the account by the number a hold's
-- id carries (located as entry ids are, src/ledger/entry_id.rs), so a hold pays no insert
-- into an index over every id, nor does its settle (not a HOT update). Ids that carry
-- none (made before 0.9.0, or by an account numbered past 40 bits) are in this partial
-- index; not unique, as on Citus a unique index must lead with the customer.
CREATE INDEX reservations_id ON billing.reservations (id)
 WHERE id < 'ff000000-0000-0000-0000-000000000000';
CREATE INDEX reservations_active ON billing.reservations (customer, expires_at) WHERE status = 'active';

-- The journal: append-only, one row per change of a balance. accounts/deltas say which
-- accounts moved (a grant id; the nil uuid for the overdraft account; a reservation id
-- for credits a hold borrowed); amount is their sum and balance_after the running sum.
CREATE TABLE billing.journal (
    customer        text COLLATE "C" NOT NULL,
    seq             bigint           NOT NULL,
    entry_id        uuid             NOT NULL,
    at              timestamptz      NOT NULL,
    kind            text COLLATE "C" NOT NULL,        -- grant, debit, hold, settle, release, refund, expiry, revocation, transfer
    amount          bigint           NOT NULL,
    balance_after   bigint           NOT NULL,
    idempotency_key text COLLATE "C",
    grant_id        uuid,
    reservation_id  uuid,
    ref_entry       uuid,                             -- a refund's debit or settle; a transfer's pair
    accounts        uuid[]           NOT NULL,
    deltas          bigint[]         NOT NULL,
    metadata        jsonb            NOT NULL DEFAULT '{}',
    PRIMARY KEY (customer, seq)
);
-- Entry ids say where their entry is: 0xff, the account's number (customers.num, 40
-- bits), the uuid version 8, the entry's seq (40 bits) and random bits
-- (src/ledger/entry_id.rs has the layout). refund(entry_id), the one call that finds an
-- entry by its id alone, reads the account by number and the entry by the journal's
-- primary key, so a debit pays no insert into a unique index over every entry id (~75
-- bytes of WAL and a dirtied leaf page). Ids made before their seq is known (transfer
-- pairs), ids of numbers or seqs beyond 40 bits, and ids made before 0.6.0 are random
-- (version 7, below 'ff...') and stay in this partial index (not unique, as every index
-- that does not lead with the customer: Citus could not keep it unique across shards).
CREATE INDEX journal_entry_id ON billing.journal (entry_id)
 WHERE entry_id < 'ff000000-0000-0000-0000-000000000000';
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

-- pg_dump keeps the data of extension tables (and the values of their sequences) only
-- when they are registered.
SELECT pg_catalog.pg_extension_config_dump('billing.customers', '');
SELECT pg_catalog.pg_extension_config_dump('billing.customer_num', '');
SELECT pg_catalog.pg_extension_config_dump('billing.grants', '');
SELECT pg_catalog.pg_extension_config_dump('billing.reservations', '');
SELECT pg_catalog.pg_extension_config_dump('billing.journal', '');

CREATE FUNCTION billing.grant(customer text, amount bigint, idempotency_key text,
    source text DEFAULT 'manual', expires_at timestamptz DEFAULT NULL,
    priority int DEFAULT 0, metadata jsonb DEFAULT '{}')
RETURNS uuid VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_grant';
COMMENT ON FUNCTION billing.grant IS 'Adds credits as a grant; returns the grant id. Repays overdraft debt first.';

CREATE FUNCTION billing.debit(customer text, amount bigint, idempotency_key text, metadata jsonb DEFAULT '{}',
    OUT entry_id uuid, OUT balance_after bigint, OUT replayed boolean)
RETURNS record
VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_debit';
COMMENT ON FUNCTION billing.debit IS 'Takes credits now, soonest-expiring grants first; BL001 when short, BL002 on a reused key.';

-- A batch of debits (src/ledger/batch.rs): one row per item, in array order; a refused
-- item answers its sqlstate and message and leaves the others be. The customers are
-- locked first, in one order (bytes order of the ids), so batches never deadlock.
CREATE FUNCTION billing.debit_many(customers text[], amounts bigint[], idempotency_keys text[])
RETURNS TABLE (i int, entry_id uuid, balance_after bigint, replayed boolean, sqlstate text, message text)
VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_debit_many';
COMMENT ON FUNCTION billing.debit_many IS 'A batch of debits (at most 10,000), each as billing.debit; one row per item, a refused item with its sqlstate and message.';

CREATE FUNCTION billing.reserve(customer text, amount bigint, idempotency_key text, ttl interval DEFAULT '15 minutes')
RETURNS uuid VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_reserve';
COMMENT ON FUNCTION billing.reserve IS 'Holds credits for work of unknown cost; returns the reservation id.';

CREATE FUNCTION billing.settle(reservation_id uuid, actual bigint,
    OUT entry_id uuid, OUT balance_after bigint, OUT replayed boolean)
RETURNS record
VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_settle';
COMMENT ON FUNCTION billing.settle IS 'Turns a hold into a debit of actual; the rest goes back. Above the hold only if available.';

CREATE FUNCTION billing.extend(reservation_id uuid, ttl interval)
RETURNS timestamptz VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_extend';
COMMENT ON FUNCTION billing.extend IS 'Keeps a hold alive until at least now + ttl; returns the new expiry.';

CREATE FUNCTION billing.release(reservation_id uuid,
    OUT entry_id uuid, OUT balance_after bigint, OUT replayed boolean)
RETURNS record
VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_release';
COMMENT ON FUNCTION billing.release IS 'Gives a hold back whole.';

CREATE FUNCTION billing.refund(entry_id uuid, amount bigint DEFAULT NULL, idempotency_key text DEFAULT NULL,
    OUT entry_id uuid, OUT balance_after bigint, OUT replayed boolean)
RETURNS record
VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_refund';
COMMENT ON FUNCTION billing.refund IS 'Returns credits of a debit or settle (all, or part) to the grants they came from.';

-- The customer-qualified forms: the same calls, every statement filtered by the customer
-- named, so on Citus the call is delegated to the worker holding that customer and runs
-- on one shard group (the id-only forms look the id up across shards first).
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

CREATE FUNCTION billing.balance(customer text)
RETURNS bigint VOLATILE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_balance';
COMMENT ON FUNCTION billing.balance IS 'Spendable credits now: live grants, minus debt, minus active holds.';

CREATE FUNCTION billing.balance_at(customer text, at timestamptz)
RETURNS bigint VOLATILE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_balance_at';
COMMENT ON FUNCTION billing.balance_at IS 'Spendable credits as of an instant, from the journal.';

CREATE FUNCTION billing.set_overdraft(customer text, "limit" bigint)
RETURNS void VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_set_overdraft';
COMMENT ON FUNCTION billing.set_overdraft IS 'How far below zero this customer may go (default 0).';

CREATE FUNCTION billing.set_slots(customer text, slots int)
RETURNS void VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_set_slots';
COMMENT ON FUNCTION billing.set_slots IS 'Spreads a hot customer''s credits over this many accounts (2 to 64) so its debits stop queueing on one lock. Fixed once set.';

-- The journal entry with this id, found as refund() finds it (by the account's number and
-- the entry's seq, or through the partial index): what `WHERE entry_id = $1` on the
-- journal would return, without scanning it.
CREATE FUNCTION billing.entry(entry_id uuid) RETURNS SETOF billing.journal
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
COMMENT ON FUNCTION billing.entry IS 'The journal entry with this id (by the account number and seq the id carries), without scanning the journal.';

-- Grants with what they have left now.
CREATE VIEW billing._grants_now AS
SELECT g.customer, g.id, g.seq, g.source, g.amount,
       g.remaining - CASE WHEN c.draw_grant = g.id THEN c.draw ELSE 0 END AS remaining,
       g.open, g.expires_at, g.priority, g.metadata, g.entry_id, g.created_at
  FROM billing.grants g JOIN billing.customers c ON c.customer = g.customer;
COMMENT ON VIEW billing._grants_now IS 'billing.grants with remaining as of now (the customer''s pending draw subtracted).';

-- Per grant: where its credits went. granted - used + refunded - expired - revoked - held
-- - transferred = remaining; `transferred` is what sits in the customer's slots (on a
-- mirror: what it holds for its grant, negative), not yet used there. `used` is summed in
-- numeric, so a grant near the bigint limit cannot overflow an intermediate sum.
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
