-- billing 0.5.0: a debit's draw on one grant is kept on the customer row.
--
-- A debit that takes from one grant only, leaving it credits, does not update the
-- grant's row: the customer row keeps the credits drawn from that grant since its row
-- was last written (draw_grant, draw), and the next call that touches another grant,
-- or empties this one, writes the draw down. One row is written per debit instead of
-- two (and one page touched: less WAL, fewer full-page images). billing.grants.remaining
-- is the remainder as of the grant's last write; billing._grants_now (and grant_status)
-- subtract the draw.

ALTER TABLE billing.customers
    ADD COLUMN draw_grant uuid,                    -- the grant debits drew from since its row was written
    ADD COLUMN draw bigint NOT NULL DEFAULT 0;     -- how much, not yet subtracted from its remaining
COMMENT ON COLUMN billing.customers.draw IS 'Credits drawn from grant draw_grant and not yet written down on its row (grants.remaining - draw is what it has left).';
COMMENT ON COLUMN billing.grants.remaining IS 'Credits left as of this row''s last write; less customers.draw for the customer''s draw_grant (see billing.grant_status).';

-- Grants with what they have left now.
CREATE VIEW billing._grants_now AS
SELECT g.customer, g.id, g.seq, g.source, g.amount,
       g.remaining - CASE WHEN c.draw_grant = g.id THEN c.draw ELSE 0 END AS remaining,
       g.open, g.expires_at, g.priority, g.metadata, g.entry_id, g.created_at
  FROM billing.grants g JOIN billing.customers c ON c.customer = g.customer;
COMMENT ON VIEW billing._grants_now IS 'billing.grants with remaining as of now (the customer''s pending draw subtracted).';

-- verify(): the ledger's checks on the grants as they are now.
CREATE OR REPLACE FUNCTION billing.verify()
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
  FROM billing._grants_now g
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
       coalesce((SELECT sum(g.remaining) FROM billing._grants_now g
                  WHERE g.customer = c.customer AND g.expires_at > c.last_at), 0)
       + c.od - coalesce((SELECT sum(b.x) FROM borrowed b WHERE b.customer = c.customer), 0),
       c.balance, NULL
  FROM billing.customers c
 WHERE c.balance <> coalesce((SELECT sum(g.remaining) FROM billing._grants_now g
                               WHERE g.customer = c.customer AND g.expires_at > c.last_at), 0)
                   + c.od - coalesce((SELECT sum(b.x) FROM borrowed b WHERE b.customer = c.customer), 0)
UNION ALL
SELECT g.customer, 'expired_grant_written_down', 0, g.remaining, 'grant ' || g.id
  FROM billing._grants_now g JOIN billing.customers c USING (customer)
 WHERE g.expires_at <= c.last_at AND g.remaining > 0
UNION ALL
-- refunds never return more than their entry consumed
SELECT r.customer, 'refund_bound', -d.amount, r.total, 'entry ' || d.entry_id
  FROM (SELECT j.customer, j.ref_entry, sum(j.amount) AS total FROM billing.journal j
         WHERE j.kind = 'refund' GROUP BY 1, 2) r
  JOIN billing.journal d ON d.entry_id = r.ref_entry
 WHERE d.kind = 'debit' AND r.total > -d.amount
$$;
