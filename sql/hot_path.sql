-- billing 0.4.0: planner settings of the functions on the hot path.
--
-- Every statement these functions run is a point lookup or a short range on an index
-- that leads with the customer (or the event id), and its plan is prepared once per
-- backend and kept (src/spi.rs). A plan made while a table is nearly empty (a fresh
-- install, just after ANALYZE saw a few rows) may pick a sequential scan, which is
-- cheapest on one page and is then kept while the table grows: the cost of each call
-- grows with the table (measured: a top-up's ingest read every purchase row, 0.17x
-- the floor). With seqscan disabled while they plan, these functions always choose the
-- index path; tables with no usable index (a one-row plans table) are still scanned.
-- verify(), maintenance() and the views read whole tables and keep the default.
ALTER FUNCTION billing."grant"(text, bigint, text, text, timestamptz, integer, jsonb) SET enable_seqscan = off;
ALTER FUNCTION billing.debit(text, bigint, text, jsonb) SET enable_seqscan = off;
ALTER FUNCTION billing.reserve(text, bigint, text, interval) SET enable_seqscan = off;
ALTER FUNCTION billing.settle(uuid, bigint) SET enable_seqscan = off;
ALTER FUNCTION billing.extend(uuid, interval) SET enable_seqscan = off;
ALTER FUNCTION billing.release(uuid) SET enable_seqscan = off;
ALTER FUNCTION billing.refund(uuid, bigint, text) SET enable_seqscan = off;
ALTER FUNCTION billing.balance(text) SET enable_seqscan = off;
ALTER FUNCTION billing.balance_at(text, timestamptz) SET enable_seqscan = off;
ALTER FUNCTION billing.set_overdraft(text, bigint) SET enable_seqscan = off;
ALTER FUNCTION billing.set_frozen(text, boolean) SET enable_seqscan = off;
ALTER FUNCTION billing.ingest(text, jsonb, text) SET enable_seqscan = off;
ALTER FUNCTION billing._inbox_ingest() SET enable_seqscan = off;
ALTER FUNCTION billing.replay(text) SET enable_seqscan = off;
ALTER FUNCTION billing.replay(text, text) SET enable_seqscan = off;
ALTER FUNCTION billing.link_customer(text, text, text) SET enable_seqscan = off;
ALTER FUNCTION billing.access(text, text) SET enable_seqscan = off;
ALTER FUNCTION billing.can_access(text, text) SET enable_seqscan = off;
ALTER FUNCTION billing.charge(text, text, bigint, text) SET enable_seqscan = off;
ALTER FUNCTION billing.record_usage(text, text, bigint, text, timestamptz, uuid) SET enable_seqscan = off;
ALTER FUNCTION billing.set_low_balance(text, bigint) SET enable_seqscan = off;
ALTER FUNCTION billing.set_auto_topup(text, bigint, bigint, integer, integer) SET enable_seqscan = off;
ALTER FUNCTION billing.report_topup(text, text, boolean) SET enable_seqscan = off;
ALTER FUNCTION billing.ack_outbox(bigint) SET enable_seqscan = off;

-- CHECK constraints on the tables every debit writes. Postgres re-reads each CHECK's
-- expression from its stored text on every INSERT/UPDATE statement (ExecRelCheck builds
-- it per statement), which cost 6 us of the 49 us a debit takes inside the server. These
-- four guard columns that only the extension's functions write and that the Rust side
-- validates before any write: entry kinds come from one closed enum (ledger/rules.rs
-- Kind), customer ids are checked non-empty on every call, a grant's amount is fixed at
-- creation (checked > 0), and set_overdraft refuses a negative limit. The money
-- invariant, grants.remaining >= 0, stays a constraint; verify() recomputes the rest.
ALTER TABLE billing.journal DROP CONSTRAINT journal_kind_check;
ALTER TABLE billing.customers DROP CONSTRAINT customers_customer_check,
                              DROP CONSTRAINT customers_overdraft_limit_check;
ALTER TABLE billing.grants DROP CONSTRAINT grants_amount_check;

-- The spending order over open grants only, as a partial index: the spending reads all
-- ask for open grants, and a customer's spent grants (every monthly allowance it ever
-- had) no longer sit in the index they scan on every debit. Updates of a remainder go by
-- the primary key.
DROP INDEX billing.grants_spend_order;
CREATE INDEX grants_spend_order ON billing.grants (customer, expires_at, priority DESC, seq) WHERE open;
