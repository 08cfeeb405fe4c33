-- billing 0.6.0: the columns a debit changes, together at the end of the customer row.
--
-- A HOT update logs the bytes of the new row between the longest prefix and suffix it
-- shares with the old one (log_heap_update). A debit changes balance, seq, last_at and
-- draw (and, from 0.6.0, draw_left); with balance the second column and draw the
-- sixteenth, that span was nearly the whole row: 187 bytes of WAL per debit against the
-- floor's 79. Postgres cannot reorder columns, so each moves as a new column at the end,
-- filled from the old one, which is dropped; the new one takes its name. draw_left
-- (head.sql) and num (entry_ids.sql) come after them. The three views that read these
-- columns are made again, as they were.
DROP VIEW billing.grant_status;
DROP VIEW billing._grants_now;
DROP VIEW billing.low_balances;
ALTER TABLE billing.customers
    ADD COLUMN balance_moved bigint NOT NULL DEFAULT 0,
    ADD COLUMN seq_moved bigint NOT NULL DEFAULT 0,
    ADD COLUMN last_at_moved timestamptz NOT NULL DEFAULT '-infinity',
    ADD COLUMN draw_moved bigint NOT NULL DEFAULT 0;
UPDATE billing.customers SET balance_moved = balance, seq_moved = seq, last_at_moved = last_at, draw_moved = draw;
ALTER TABLE billing.customers DROP COLUMN balance, DROP COLUMN seq, DROP COLUMN last_at, DROP COLUMN draw;
ALTER TABLE billing.customers RENAME COLUMN balance_moved TO balance;
ALTER TABLE billing.customers RENAME COLUMN seq_moved TO seq;
ALTER TABLE billing.customers RENAME COLUMN last_at_moved TO last_at;
ALTER TABLE billing.customers RENAME COLUMN draw_moved TO draw;
COMMENT ON COLUMN billing.customers.draw IS 'Credits drawn from grant draw_grant and not yet written down on its row (grants.remaining - draw is what it has left).';

-- The views, as 0.5.0 made them.
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
REVOKE ALL ON billing.grant_status FROM PUBLIC;
GRANT SELECT ON billing.grant_status TO billing_reader, billing_admin;

CREATE VIEW billing.low_balances AS
SELECT c.customer, t.balance, c.low_balance AS threshold
  FROM billing.customers c,
       LATERAL (SELECT c.balance + CASE WHEN c.slots > 1 THEN
                  (SELECT coalesce(sum(s.balance), 0) FROM generate_series(1, c.slots - 1) k
                     JOIN billing.customers s ON s.customer = c.customer || '#' || k)::bigint
                  ELSE 0 END AS balance) t
 WHERE c.low_balance IS NOT NULL AND c.slot_of IS NULL AND t.balance < c.low_balance;
REVOKE ALL ON billing.low_balances FROM PUBLIC;
GRANT SELECT ON billing.low_balances TO billing_reader;
