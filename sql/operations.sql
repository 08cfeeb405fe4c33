-- billing: operations (SPEC section 5): the maintenance job, the consistency check, and
-- the operator views not kept with their concept's tables.

CREATE FUNCTION billing.maintenance(batch int DEFAULT 10000)
RETURNS bigint VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_maintenance';
COMMENT ON FUNCTION billing.maintenance IS 'Writes the journal rows of expired grants and lapsed holds; returns how many. Safe from pg_cron at any interval.';

-- Billing's now: the transaction's test clock (billing.clock), else the wall clock.
CREATE FUNCTION billing._clock_now() RETURNS timestamptz VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_clock_now';

-- billing.verify(): recomputes every balance and every grant remainder from the journal,
-- and checks what the tables' constraints do not (sql/ledger.sql says why they are few).
-- One row per inconsistency; none is the healthy answer.
--
-- The checks of one customer's rows run over one set of tables (billing._verify_tables):
-- billing's own on one server; on Citus, each shard group's on the worker that holds it
-- (billing._verify_shard, through run_command_on_shards), where they are plain local
-- tables, so the one query plans as it does on one server. The checks across customers
-- (account numbers, events, the outbox) run as distributed queries.
CREATE FUNCTION billing._verify_tables(customers regclass, grants regclass, reservations regclass, journal regclass,
    usage_events regclass, usage_carry regclass, subscription_periods regclass)
RETURNS TABLE (customer text, check_name text, expected bigint, actual bigint, detail text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
BEGIN
    RETURN QUERY EXECUTE format($q$
SELECT v.customer::text, v.check_name::text, v.expected::bigint, v.actual::bigint, v.detail::text FROM (
WITH gn AS (
    SELECT g.customer, g.id, g.seq, g.source, g.amount,
           g.remaining - CASE WHEN c.draw_grant = g.id THEN c.draw ELSE 0 END AS remaining,
           g.open, g.expires_at, g.priority, g.metadata
      FROM %2$s g JOIN %1$s c ON c.customer = g.customer
), j AS (
    SELECT j.*, lag(j.balance_after, 1, 0::bigint) OVER w AS before,
           lag(j.at) OVER w AS prev_at, row_number() OVER w AS n,
           (SELECT coalesce(sum(d), 0) FROM unnest(j.deltas) d) AS line_sum
      FROM %4$s j
    WINDOW w AS (PARTITION BY j.customer ORDER BY j.seq)
), lines AS (
    SELECT j.customer, j.kind, l.a, l.d
      FROM %4$s j, unnest(j.accounts, j.deltas) AS l(a, d)
), last AS (
    SELECT DISTINCT ON (j.customer) j.customer, j.balance_after, j.seq, j.at
      FROM %4$s j ORDER BY j.customer, j.seq DESC
), borrowed AS (
    SELECT r.customer, r.id, sum(l.x) FILTER (WHERE l.a = r.id) AS x
      FROM %3$s r, unnest(r.accounts, r.amounts) AS l(a, x)
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
-- and no entry is dated after now (as a test clock left on a pooled connection would write)
SELECT j.customer, 'future_entry', NULL, NULL, 'entry ' || j.entry_id || ' is dated ' || j.at || ', after now'
  FROM %4$s j WHERE j.at > (SELECT billing._clock_now())
UNION ALL
-- the cached balance and sequence of each customer match the journal
SELECT c.customer, 'customer_balance', coalesce(l.balance_after, 0), c.balance, NULL
  FROM %1$s c LEFT JOIN last l USING (customer)
 WHERE c.balance <> coalesce(l.balance_after, 0)
UNION ALL
SELECT c.customer, 'customer_seq', coalesce(l.seq, 0), c.seq, NULL
  FROM %1$s c LEFT JOIN last l USING (customer)
 WHERE c.seq <> coalesce(l.seq, 0)
UNION ALL
-- every grant's remainder is the sum of the journal lines on it
SELECT g.customer, 'grant_remaining', coalesce(s.total, 0), g.remaining, 'grant ' || g.id
  FROM gn g
  LEFT JOIN (SELECT lines.customer, lines.a, sum(lines.d) AS total FROM lines GROUP BY 1, 2) s
         ON s.customer = g.customer AND s.a = g.id
 WHERE g.remaining <> coalesce(s.total, 0) OR g.open <> (g.remaining > 0)
UNION ALL
-- the overdraft account
SELECT c.customer, 'overdraft_account', coalesce(s.total, 0), c.od, NULL
  FROM %1$s c
  LEFT JOIN (SELECT lines.customer, sum(lines.d) AS total FROM lines
              WHERE lines.a = '00000000-0000-0000-0000-000000000000' GROUP BY 1) s USING (customer)
 WHERE c.od <> coalesce(s.total, 0)
UNION ALL
-- what each hold borrowed is on its own account while it is active, and nothing after
SELECT r.customer, 'hold_borrowing', -coalesce(b.x, 0), coalesce(s.total, 0), 'reservation ' || r.id
  FROM %3$s r
  LEFT JOIN borrowed b ON b.customer = r.customer AND b.id = r.id
  LEFT JOIN (SELECT lines.customer, lines.a, sum(lines.d) AS total FROM lines GROUP BY 1, 2) s
         ON s.customer = r.customer AND s.a = r.id
 WHERE coalesce(s.total, 0) <> -coalesce(b.x, 0)
UNION ALL
SELECT r.customer, 'hold_amount', r.amount, (SELECT sum(x) FROM unnest(r.amounts) x), 'reservation ' || r.id
  FROM %3$s r
 WHERE r.amount <> (SELECT sum(x) FROM unnest(r.amounts) x)
UNION ALL
-- the balance equals its parts: live grants + overdraft account - active borrowing,
-- as of the customer's last entry (expired grants must have been written down)
SELECT c.customer, 'balance_parts',
       coalesce((SELECT sum(g.remaining) FROM gn g
                  WHERE g.customer = c.customer AND g.expires_at > c.last_at), 0)
       + c.od - coalesce((SELECT sum(b.x) FROM borrowed b WHERE b.customer = c.customer), 0),
       c.balance, NULL
  FROM %1$s c
 WHERE c.balance <> coalesce((SELECT sum(g.remaining) FROM gn g
                               WHERE g.customer = c.customer AND g.expires_at > c.last_at), 0)
                   + c.od - coalesce((SELECT sum(b.x) FROM borrowed b WHERE b.customer = c.customer), 0)
UNION ALL
SELECT g.customer, 'expired_grant_written_down', 0, g.remaining, 'grant ' || g.id
  FROM gn g JOIN %1$s c USING (customer)
 WHERE g.expires_at <= c.last_at AND g.remaining > 0
UNION ALL
-- refunds never return more than their entry consumed
SELECT r.customer, 'refund_bound', -d.amount, r.total, 'entry ' || d.entry_id
  FROM (SELECT j.customer, j.ref_entry, sum(j.amount) AS total FROM %4$s j
         WHERE j.kind = 'refund' GROUP BY 1, 2) r
  JOIN %4$s d ON d.customer = r.customer AND d.entry_id = r.ref_entry
 WHERE d.kind = 'debit' AND r.total > -d.amount
UNION ALL
-- every transfer has its pair in another account of the same customer: the same
-- credits the other way
SELECT t.customer, 'transfer_pair', -t.amount, p.amount, 'entry ' || t.entry_id
  FROM %4$s t
  JOIN %1$s ct ON ct.customer = t.customer
  LEFT JOIN (%4$s p JOIN %1$s cp ON cp.customer = p.customer)
         ON p.entry_id = t.ref_entry AND p.kind = 'transfer' AND p.ref_entry = t.entry_id
        AND p.customer <> t.customer
        AND coalesce(cp.slot_of, cp.customer) = coalesce(ct.slot_of, ct.customer)
 WHERE t.kind = 'transfer' AND p.amount IS DISTINCT FROM -t.amount
UNION ALL
-- a mirror holds credits of a grant of its own customer, with that grant's expiry
SELECT m.customer, 'mirror_origin', NULL, NULL, 'grant ' || m.id
  FROM %2$s m
  JOIN %1$s c ON c.customer = m.customer
  LEFT JOIN %2$s o ON o.customer = c.slot_of AND o.id = m.origin
 WHERE m.origin IS NOT NULL AND (o.id IS NULL OR o.expires_at <> m.expires_at)
UNION ALL
-- a customer's pending draw is on an open grant of its own that it leaves credits
SELECT c.customer, 'draw', c.draw, coalesce(g.remaining, 0), 'grant ' || c.draw_grant
  FROM %1$s c
  LEFT JOIN %2$s g ON g.customer = c.customer AND g.id = c.draw_grant
 WHERE c.draw <> 0 AND (g.id IS NULL OR NOT g.open OR g.remaining - c.draw <= 0 OR c.draw < 0)
UNION ALL
-- a slotted customer has exactly its slot accounts
SELECT c.customer, 'slot_accounts', c.slots - 1, count(s.customer), NULL
  FROM %1$s c
  LEFT JOIN %1$s s ON s.slot_of = c.customer
 WHERE c.slot_of IS NULL
 GROUP BY c.customer, c.slots
HAVING count(s.customer) <> c.slots - 1
UNION ALL
-- a located entry id names its own account's number and its own seq
SELECT j.customer, 'entry_id', j.seq, ('x' || substr(replace(j.entry_id::text, '-', ''), 18, 10))::bit(40)::bigint,
       'entry ' || j.entry_id || ' does not name account ' || c.num || ', seq ' || j.seq
  FROM %4$s j JOIN %1$s c ON c.customer = j.customer
 WHERE j.entry_id >= 'ff000000-0000-0000-0000-000000000000'
   AND substr(replace(j.entry_id::text, '-', ''), 1, 12) || substr(replace(j.entry_id::text, '-', ''), 18, 10)
       <> 'ff' || lpad(to_hex(c.num), 10, '0') || lpad(to_hex(j.seq), 10, '0')
UNION ALL
-- the grant the customer row keeps as first in spending order (draw_left) is: it has
-- that remainder, and no other open grant with credits comes before it
SELECT c.customer, 'first_grant', c.draw_left, g.remaining - c.draw, 'grant ' || c.draw_grant
  FROM %1$s c
  LEFT JOIN %2$s g ON g.customer = c.customer AND g.id = c.draw_grant AND g.open
 WHERE c.draw_left IS NOT NULL
   AND (g.id IS NULL OR g.remaining - c.draw <> c.draw_left OR c.draw_left <= 0
        OR EXISTS (SELECT FROM gn o
                    WHERE o.customer = c.customer AND o.open AND o.remaining > 0 AND o.id <> g.id
                      AND (o.expires_at, -o.priority, o.seq) < (g.expires_at, -g.priority, g.seq)))
UNION ALL
-- the rows the hot path writes hold what its functions write (no CHECK: sql/ledger.sql)
SELECT r.customer, 'reservation_row', NULL::bigint, r.amount,
       'reservation ' || r.id || ': amount ' || r.amount || ', status ' || coalesce(r.status, 'NULL')
  FROM %3$s r
 WHERE NOT (r.amount > 0 AND r.status IN ('active', 'settled', 'released', 'expired'))
UNION ALL
SELECT u.customer, 'usage_row', NULL::bigint, u.credits,
       'usage ' || u.idempotency_key || ': quantity ' || u.quantity || ', credits ' || u.credits
  FROM %5$s u
 WHERE NOT (u.quantity > 0 AND u.credits >= 0)
UNION ALL
SELECT k.customer, 'usage_carry', k.den, k.num,
       'carry of meter ' || k.meter || ' is ' || k.num || '/' || k.den || ', not a fraction below one'
  FROM %6$s k
 WHERE NOT (k.num >= 0 AND k.den > 0 AND k.num < k.den)
UNION ALL
-- a period's plan grants add up to what it says it granted, and its allowance stays
-- between its base and its ceiling
SELECT p.customer, 'plan_period', p.granted, coalesce(g.total, 0),
       'subscription ' || p.subscription_id || ', period ending ' || p.period_end || ': granted ' || p.granted
       || ', plan grants ' || coalesce(g.total, 0) || ', allowance ' || p.allowance || ', ceiling ' || p.ceiling
  FROM %7$s p
  LEFT JOIN LATERAL (SELECT sum(g.amount)::bigint AS total FROM %2$s g
                      WHERE g.customer = p.customer AND g.source LIKE 'plan:%%' AND g.expires_at = p.period_end
                        AND g.metadata->>'subscription' = p.subscription_id) g ON true
 WHERE p.granted <> coalesce(g.total, 0) OR p.allowance > p.ceiling OR p.base > p.allowance
) v(customer, check_name, expected, actual, detail)
$q$, customers, grants, reservations, journal, usage_events, usage_carry, subscription_periods);
END $f$;
COMMENT ON FUNCTION billing._verify_tables IS 'The per-customer checks of billing.verify() over the given tables (billing''s own, or one shard group''s).';

-- On a Citus worker: the checks of the shard group of the customers shard given.
CREATE FUNCTION billing._verify_shard(customers_shard regclass)
RETURNS TABLE (customer text, check_name text, expected bigint, actual bigint, detail text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
DECLARE
    shard regclass[];
BEGIN
    EXECUTE $q$
        SELECT array_agg(format('billing.%I', t || '_' || s.shardid)::regclass ORDER BY k)
          FROM unnest(ARRAY['customers', 'grants', 'reservations', 'journal', 'usage_events', 'usage_carry',
                            'subscription_periods']) WITH ORDINALITY AS x(t, k)
          JOIN pg_catalog.pg_dist_shard s ON s.logicalrelid = ('billing.' || x.t)::regclass
         WHERE s.shardminvalue = (SELECT shardminvalue FROM pg_catalog.pg_dist_shard
                                   WHERE shardid = substring($1::text FROM '_([0-9]+)$')::bigint)$q$
    INTO shard USING customers_shard;
    RETURN QUERY SELECT * FROM billing._verify_tables(shard[1], shard[2], shard[3], shard[4], shard[5], shard[6], shard[7]);
END $f$;
COMMENT ON FUNCTION billing._verify_shard IS 'billing._verify_tables over one shard group (Citus; called by billing.verify on the worker holding it).';

CREATE FUNCTION billing.verify()
RETURNS TABLE (customer text, check_name text, expected bigint, actual bigint, detail text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
    distributed boolean := false;
BEGIN
    IF to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL THEN
        EXECUTE $q$SELECT count(*) > 0 FROM pg_catalog.pg_dist_partition WHERE logicalrelid = 'billing.customers'::regclass$q$
            INTO distributed;
    END IF;
    IF distributed THEN
        FOR r IN EXECUTE $q$SELECT shardid, success, result FROM run_command_on_shards('billing.customers',
                   $c$SELECT coalesce(jsonb_agg(v), '[]')::text FROM billing._verify_shard('%s') v$c$)$q$ LOOP
            IF NOT r.success THEN
                RAISE EXCEPTION 'billing.verify(): shard % could not be checked: %', r.shardid, r.result;
            END IF;
            RETURN QUERY SELECT x.customer, x.check_name, x.expected, x.actual, x.detail
                FROM jsonb_to_recordset(r.result::jsonb)
                  AS x(customer text, check_name text, expected bigint, actual bigint, detail text);
        END LOOP;
    ELSE
        RETURN QUERY SELECT * FROM billing._verify_tables('billing.customers', 'billing.grants', 'billing.reservations',
            'billing.journal', 'billing.usage_events', 'billing.usage_carry', 'billing.subscription_periods');
    END IF;
    RETURN QUERY
-- an account number names one account
SELECT min(c.customer), 'account_number', 1, count(*), 'number ' || c.num || ' is on ' || string_agg(c.customer, ', ')
  FROM billing.customers c
 GROUP BY c.num
HAVING count(*) > 1
UNION ALL
SELECT e.customer, 'event_status', NULL::bigint, NULL::bigint,
       'event ' || e.provider || ' ' || e.event_id || ' has status ' || coalesce(e.status, 'NULL')
  FROM billing.events e
 WHERE NOT (e.status IN ('applied', 'stale', 'ignored', 'failed'))
UNION ALL
SELECT o.customer, 'outbox_kind', o.id, NULL::bigint, 'outbox row ' || o.id || ' has kind ' || coalesce(o.kind, 'NULL')
  FROM billing.outbox o
 WHERE NOT (o.kind IN ('low_balance', 'subscription_status', 'access_changed', 'event_failed', 'topup_due'));
    RETURN QUERY
-- the access answer kept on each customer's row is the one its subscriptions give
-- (a distributed query on Citus: the join is on the customer, co-located)
SELECT c.customer::text, 'access_kept'::text, NULL::bigint, NULL::bigint,
       format('kept: counts until %s, allows until %s, plan %s; its subscriptions say: %s, %s, plan %s',
              c.sub_counts_until, c.sub_allowed_until, coalesce(c.sub_plan, 'NULL'),
              coalesce(k.counts_until, '-infinity'), coalesce(k.allowed_until, '-infinity'), coalesce(k.plan, 'NULL'))
  FROM billing.customers c LEFT JOIN billing._access_kept k ON k.customer = c.customer
 WHERE (c.sub_counts_until, c.sub_allowed_until, c.sub_plan)
       IS DISTINCT FROM (coalesce(k.counts_until, '-infinity'), coalesce(k.allowed_until, '-infinity'), k.plan);
END $$;
COMMENT ON FUNCTION billing.verify IS 'Recomputes every balance and grant remainder from the journal; one row per inconsistency.';

CREATE VIEW billing.open_holds AS
SELECT r.customer, r.id AS reservation_id, r.amount, r.created_at, r.expires_at
  FROM billing.reservations r WHERE r.status = 'active';
