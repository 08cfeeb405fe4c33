-- billing 0.9.0: plan allowances per (subscription, period) (SPEC section 2, "Plan changes").
--
-- A period's allowance is computed from what its paid invoices say (src/webhook/allowance.rs)
-- and granted as the difference from what the ledger already got, so it is the same for
-- every order of arrival and never passes the largest plan held in the period.

-- What each paid invoice says of each period its lines touch: one row for its base lines
-- and one per change it bills (a duplicate delivery finds its rows and changes nothing).
CREATE TABLE billing.period_invoices (
    customer        text        NOT NULL,
    subscription_id text        NOT NULL,
    period_end      timestamptz NOT NULL,
    invoice_id      text        NOT NULL,
    billing_reason  text,
    period_start    timestamptz,          -- earliest start of its base lines
    base            bigint      NOT NULL, -- allowance of its base (non-proration) lines
    old_allowance   bigint      NOT NULL, -- of its proration credits (unused time on the old items)
    new_allowance   bigint      NOT NULL, -- of its proration charges (the rest of the period on the new items)
    change_at       timestamptz NOT NULL, -- when its change took effect; -infinity for its base lines
    created         bigint      NOT NULL, -- the invoice event's created
    PRIMARY KEY (customer, subscription_id, period_end, invoice_id, change_at)
);
COMMENT ON TABLE billing.period_invoices IS 'What each paid invoice says of each subscription period: the facts a period''s allowance is computed from.';

CREATE TABLE billing.subscription_periods (
    customer        text        NOT NULL,
    subscription_id text        NOT NULL,
    period_end      timestamptz NOT NULL,
    period_start    timestamptz,          -- the latest start reported (invoice lines, subscription)
    base            bigint      NOT NULL DEFAULT 0,  -- the plan billed for the period (largest base)
    ceiling         bigint      NOT NULL DEFAULT 0,  -- the largest allowance held in the period
    allowance       bigint      NOT NULL DEFAULT 0,  -- what the period is entitled to
    granted         bigint      NOT NULL DEFAULT 0,  -- what the ledger got (less when paid after the end)
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer, subscription_id, period_end)
);
COMMENT ON TABLE billing.subscription_periods IS 'Per subscription period: the plan allowance it is entitled to and what was granted.';

-- The plan in force follows the latest subscription event; an invoice names it only for a
-- subscription no event has described yet, and then the latest invoice wins.
ALTER TABLE billing.subscriptions
    ADD COLUMN plan_created bigint,
    ADD COLUMN plan_event text,
    ADD COLUMN plan_from_subscription boolean NOT NULL DEFAULT false;
UPDATE billing.subscriptions SET plan_from_subscription = true
 WHERE plan IS NOT NULL AND EXISTS (SELECT FROM billing.provider_objects o
                                     WHERE o.provider = subscriptions.provider AND o.object_id = subscriptions.subscription_id);

-- Allowances granted before 0.9.0 (one grant per paid invoice, keyed stripe:invoice:<id>)
-- become their periods' facts, so a later change in the same period tops up from them.
INSERT INTO billing.period_invoices (customer, subscription_id, period_end, invoice_id, base, old_allowance, new_allowance, change_at, created)
SELECT g.customer, g.metadata->>'subscription', g.expires_at, g.metadata->>'invoice', g.amount, 0, 0, '-infinity', 0
  FROM billing.grants g
 WHERE g.source LIKE 'plan:%' AND g.metadata ? 'invoice' AND g.metadata ? 'subscription' AND g.expires_at <> 'infinity'
ON CONFLICT DO NOTHING;
INSERT INTO billing.subscription_periods (customer, subscription_id, period_end, base, ceiling, allowance, granted)
SELECT g.customer, g.metadata->>'subscription', g.expires_at, max(g.amount), max(g.amount), max(g.amount), sum(g.amount)
  FROM billing.grants g
 WHERE g.source LIKE 'plan:%' AND g.metadata ? 'invoice' AND g.metadata ? 'subscription' AND g.expires_at <> 'infinity'
 GROUP BY 1, 2, 3
ON CONFLICT DO NOTHING;

-- verify(): a period's grants add up to what it says it granted, and its allowance stays
-- between its base and its ceiling.
CREATE OR REPLACE FUNCTION billing.verify()
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
UNION ALL
SELECT p.customer, 'plan_period', p.granted, coalesce(g.total, 0),
       'subscription ' || p.subscription_id || ', period ending ' || p.period_end || ': granted ' || p.granted
       || ', plan grants ' || coalesce(g.total, 0) || ', allowance ' || p.allowance || ', ceiling ' || p.ceiling
  FROM billing.subscription_periods p
  LEFT JOIN LATERAL (SELECT sum(g.amount)::bigint AS total FROM billing.grants g
                      WHERE g.customer = p.customer AND g.source LIKE 'plan:%' AND g.expires_at = p.period_end
                        AND g.metadata->>'subscription' = p.subscription_id) g ON true
 WHERE p.granted <> coalesce(g.total, 0) OR p.allowance > p.ceiling OR p.base > p.allowance
$$;

SELECT pg_catalog.pg_extension_config_dump('billing.period_invoices', '');
SELECT pg_catalog.pg_extension_config_dump('billing.subscription_periods', '');

REVOKE ALL ON billing.period_invoices, billing.subscription_periods FROM PUBLIC;
GRANT SELECT ON billing.period_invoices, billing.subscription_periods TO billing_reader;
