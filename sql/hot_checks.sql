-- billing 0.8.0: the CHECK constraints left on the tables a reserve, a settle, a usage and
-- an ingest write, moved into verify().
--
-- Postgres builds every CHECK of a table from its stored text at each INSERT or UPDATE
-- statement (ExecRelCheck: stringToNode, then ExecPrepareExpr), whatever the row. The two
-- on billing.reservations cost a reserve and a settle ~60,000 instructions each (of
-- ~476,000 and ~558,000), record_usage paid for four (its usage row and its carry), an
-- ingest for the event's status. 0.4.0 moved four such constraints off the debit's tables
-- for the same reason (sql/hot_path.sql). These guard columns only the extension's
-- functions write, from values the Rust side makes: statuses and kinds are literals of
-- the code, a hold's amount and a usage's quantity are checked positive before any
-- write, credits and carried fractions come from the rating (src/usage/rating.rs, exact
-- and property-tested: 0 <= num < den). The money invariant grants.remaining >= 0 stays
-- a constraint; verify() now reports a row that breaks any of the others.
ALTER TABLE billing.reservations DROP CONSTRAINT reservations_amount_check,
                                 DROP CONSTRAINT reservations_status_check;
ALTER TABLE billing.usage_events DROP CONSTRAINT usage_events_quantity_check,
                                 DROP CONSTRAINT usage_events_credits_check;
ALTER TABLE billing.usage_carry DROP CONSTRAINT usage_carry_num_check,
                                DROP CONSTRAINT usage_carry_check;
ALTER TABLE billing.events DROP CONSTRAINT events_status_check;
ALTER TABLE billing.outbox DROP CONSTRAINT outbox_kind_check;

-- verify(): the checks so far, plus the rows those constraints refused.
ALTER FUNCTION billing.verify() RENAME TO _verify_entry_ids;
REVOKE ALL ON FUNCTION billing._verify_entry_ids() FROM PUBLIC, billing_reader;
CREATE FUNCTION billing.verify()
RETURNS TABLE (customer text, check_name text, expected bigint, actual bigint, detail text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
SELECT * FROM billing._verify_entry_ids()
UNION ALL
SELECT r.customer, 'reservation_row', NULL::bigint, r.amount,
       'reservation ' || r.id || ': amount ' || r.amount || ', status ' || coalesce(r.status, 'NULL')
  FROM billing.reservations r
 WHERE NOT (r.amount > 0 AND r.status IN ('active', 'settled', 'released', 'expired'))
UNION ALL
SELECT u.customer, 'usage_row', NULL::bigint, u.credits,
       'usage ' || u.idempotency_key || ': quantity ' || u.quantity || ', credits ' || u.credits
  FROM billing.usage_events u
 WHERE NOT (u.quantity > 0 AND u.credits >= 0)
UNION ALL
SELECT k.customer, 'usage_carry', k.den, k.num,
       'carry of meter ' || k.meter || ' is ' || k.num || '/' || k.den || ', not a fraction below one'
  FROM billing.usage_carry k
 WHERE NOT (k.num >= 0 AND k.den > 0 AND k.num < k.den)
UNION ALL
SELECT e.customer, 'event_status', NULL::bigint, NULL::bigint,
       'event ' || e.provider || ' ' || e.event_id || ' has status ' || coalesce(e.status, 'NULL')
  FROM billing.events e
 WHERE NOT (e.status IN ('applied', 'stale', 'ignored', 'failed'))
UNION ALL
SELECT o.customer, 'outbox_kind', o.id, NULL::bigint, 'outbox row ' || o.id || ' has kind ' || coalesce(o.kind, 'NULL')
  FROM billing.outbox o
 WHERE NOT (o.kind IN ('low_balance', 'subscription_status', 'access_changed', 'event_failed', 'topup_due'))
$$;
COMMENT ON FUNCTION billing.verify IS 'Recomputes every balance and grant remainder from the journal; one row per inconsistency.';
REVOKE ALL ON FUNCTION billing.verify() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION billing.verify() TO billing_reader;
