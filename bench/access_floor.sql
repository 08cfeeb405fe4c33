-- access check: the floor, plain SQL over the extension's tables (what can_access reads)
-- -D run=<n> -D k=0 -D ncust=<customers to pick from> (1 = the hot customer c1)
\set cid random(1, :ncust)
\set k :k + 1
\set key :run * 100000000000 + :client_id * 1000000000 + :k
SELECT NOT c.frozen AND (c.balance > 0 OR (s.status IN ('active', 'trialing') AND coalesce(s.paid_through, s.current_period_end) > now()))
  FROM billing.customers c
  LEFT JOIN LATERAL (SELECT s.status, s.paid_through, s.current_period_end FROM billing.subscriptions s
                      WHERE s.customer = c.customer
                      ORDER BY s.status IN ('canceled', 'incomplete_expired'), coalesce(s.paid_through, s.current_period_end) DESC NULLS LAST
                      LIMIT 1) s ON true
 WHERE c.customer = 'c' || :cid::text;
