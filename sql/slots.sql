-- billing 0.5.0: slotted balances for hot customers (opt-in, billing.set_slots).
--
-- Every balance change of a customer holds the customer's lock until its commit record
-- is flushed, so one customer's debits form a chain: at most one per flush, whatever the
-- client count. A slotted customer spreads its credits over n accounts (its own, slot
-- 0, and n - 1 slot accounts named '<customer>#<k>'), each a ledger of its own with its
-- own lock, journal sequence and grants; n debits can then commit in one flush.
-- A spending call goes to the slot its idempotency key hashes to, so a retried key
-- always meets the entry it made; when that slot is short, the call takes every slot's
-- lock, gathers all credits back into slot 0, runs there (with the overdraft limit), and
-- spreads what is left again. Credits move as 'transfer' journal entries, in pairs (one
-- in each account, each naming the other in ref_entry), from a grant to its mirror in
-- the slot (grants.origin) and back; a mirror keeps its grant's expiry and priority.

ALTER TABLE billing.customers
    ADD COLUMN slots int NOT NULL DEFAULT 1,   -- accounts of a slotted customer, on its own row
    ADD COLUMN slot_of text;                   -- on a slot account: the customer it belongs to
COMMENT ON COLUMN billing.customers.slots IS 'How many accounts hold this customer''s credits (1 = just this row; see billing.set_slots).';
COMMENT ON COLUMN billing.customers.slot_of IS 'Set on the slot accounts of a slotted customer: the customer they belong to.';

ALTER TABLE billing.grants ADD COLUMN origin uuid;   -- on a slot's mirror: the grant it mirrors
COMMENT ON COLUMN billing.grants.origin IS 'On a slot account''s mirror grant: the customer''s grant whose credits it holds.';

CREATE FUNCTION billing.set_slots(customer text, slots int)
RETURNS void VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_set_slots';
COMMENT ON FUNCTION billing.set_slots IS 'Spreads a hot customer''s credits over this many accounts (2 to 64) so its debits stop queueing on one lock. Fixed once set.';
REVOKE ALL ON FUNCTION billing.set_slots(text, int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION billing.set_slots(text, int) TO billing_admin;

-- Per grant: where its credits went; `transferred` is what sits in the customer's slots
-- (on a mirror: what it holds for its grant, negative), not yet used there.
CREATE OR REPLACE VIEW billing.grant_status WITH (security_barrier) AS
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

-- verify(): the ledger's checks, per account, plus those of the slots.
ALTER FUNCTION billing.verify() RENAME TO _verify_ledger;
REVOKE ALL ON FUNCTION billing._verify_ledger() FROM PUBLIC, billing_reader;
CREATE FUNCTION billing.verify()
RETURNS TABLE (customer text, check_name text, expected bigint, actual bigint, detail text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
SELECT * FROM billing._verify_ledger()
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
$$;
COMMENT ON FUNCTION billing.verify IS 'Recomputes every balance and grant remainder from the journal; one row per inconsistency.';
REVOKE ALL ON FUNCTION billing.verify() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION billing.verify() TO billing_reader;

-- low_balances: a slotted customer's balance is the sum of its accounts.
CREATE OR REPLACE VIEW billing.low_balances AS
SELECT c.customer, t.balance, c.low_balance AS threshold
  FROM billing.customers c,
       LATERAL (SELECT c.balance + CASE WHEN c.slots > 1 THEN
                  (SELECT coalesce(sum(s.balance), 0) FROM generate_series(1, c.slots - 1) k
                     JOIN billing.customers s ON s.customer = c.customer || '#' || k)::bigint
                  ELSE 0 END AS balance) t
 WHERE c.low_balance IS NOT NULL AND c.slot_of IS NULL AND t.balance < c.low_balance;
