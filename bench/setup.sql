-- Data for bench/run.sh (run after bench/peers.sql), through the extension's own API:
--   customers c1..c10000, each with three grants (a purchase that never expires, a promo
--   and a plan allowance with far expiries), so a debit picks among several grants;
--   c1..c5000 also have an active 'pro' subscription (from signed Stripe events through
--   billing.ingest); the same balances and subscriptions in the peers' tables;
--   a meter; a Stripe endpoint and secret; three documents per customer for the RLS test;
--   bench.gen_deliveries(), which precomputes a run's signed deliveries.
\set ON_ERROR_STOP 1
\set customers 10000
CREATE EXTENSION billing;
CREATE SCHEMA bench;

SELECT billing.add_endpoint('stripe-bench', 'stripe');
SELECT billing.add_secret('stripe-bench', 'whsec_bench_5f0e1c2b8a9d4e7f');
INSERT INTO peer.pl_secrets VALUES ('stripe-bench', 'whsec_bench_5f0e1c2b8a9d4e7f');
SELECT billing.define_plan('pro', '{chat,images}', 5000, '3 days', 'price_pro');
SELECT billing.define_meter('llm_tokens', 3, 1000, now() - interval '1 day');
INSERT INTO peer.pl_meter_prices VALUES ('llm_tokens', now() - interval '1 day', 3, 1000);

SELECT count(*) AS grants FROM generate_series(1, :customers) i,
  LATERAL (VALUES (billing.grant('c' || i, 1000000000000, 'seed:' || i || ':purchase', 'purchase')),
                  (billing.grant('c' || i, 1000000, 'seed:' || i || ':promo', 'promotion', '2099-01-01', 10)),
                  (billing.grant('c' || i, 1000000, 'seed:' || i || ':plan', 'plan:pro', '2098-01-01', 0))) g(id);
-- The slotted hot customer (billing.set_slots): the same three grants as c1, 16 slots.
SELECT billing.grant('hot', 1000000000000, 'seed:hot:purchase', 'purchase'),
       billing.grant('hot', 1000000, 'seed:hot:promo', 'promotion', '2099-01-01', 10),
       billing.grant('hot', 1000000, 'seed:hot:plan', 'plan:pro', '2098-01-01', 0);
SELECT billing.set_slots('hot', 16);
-- The same with 64 slots (billing.set_slots' most): 8 clients rarely meet on one slot.
SELECT billing.grant('hot64', 1000000000000, 'seed:hot64:purchase', 'purchase'),
       billing.grant('hot64', 1000000, 'seed:hot64:promo', 'promotion', '2099-01-01', 10),
       billing.grant('hot64', 1000000, 'seed:hot64:plan', 'plan:pro', '2098-01-01', 0);
SELECT billing.set_slots('hot64', 64);
INSERT INTO peer.floor_accounts (id, balance) SELECT 'c' || i, 1000002000000 FROM generate_series(1, :customers) i;
-- The peer's customers get the same three grants (its balance: their sum; its first expiry: the plan grant's).
INSERT INTO peer.pl_accounts (id, balance, next_event_at) SELECT 'c' || i, 1000002000000, '2098-01-01' FROM generate_series(1, :customers) i;
INSERT INTO peer.pl_grants (customer, amount, remaining, open, expires_at, priority)
SELECT 'c' || i, g.amount, g.amount, true, g.expires_at, g.priority
  FROM generate_series(1, :customers) i,
       (VALUES (1000000000000, 'infinity'::timestamptz, 0), (1000000, '2099-01-01', 10), (1000000, '2098-01-01', 0)) g(amount, expires_at, priority)
 ORDER BY i;

-- ---- Stripe deliveries ----
-- Shapes of real Stripe objects (2025 API), pretty-printed as Stripe sends them: ~3 KB.
CREATE FUNCTION bench.checkout_obj(n text, cust text, credits bigint, created bigint) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
SELECT jsonb_build_object(
  'id', 'cs_live_' || n, 'object', 'checkout.session', 'adaptive_pricing', jsonb_build_object('enabled', true),
  'after_expiration', null, 'allow_promotion_codes', false, 'amount_subtotal', 1000, 'amount_total', 1000,
  'automatic_tax', jsonb_build_object('enabled', false, 'liability', null, 'provider', null, 'status', null),
  'billing_address_collection', null, 'cancel_url', 'https://app.example.com/billing/cancel',
  'client_reference_id', cust, 'client_secret', null, 'collected_information', null, 'consent', null,
  'consent_collection', null, 'created', created, 'currency', 'usd', 'currency_conversion', null,
  'custom_fields', '[]'::jsonb,
  'custom_text', jsonb_build_object('after_submit', null, 'shipping_address', null, 'submit', null, 'terms_of_service_acceptance', null),
  'customer', 'cus_' || cust, 'customer_creation', 'if_required',
  'customer_details', jsonb_build_object('address', jsonb_build_object('city', 'Berlin', 'country', 'DE', 'line1', 'Torstrasse 1',
      'line2', null, 'postal_code', '10119', 'state', null), 'email', cust || '@example.com', 'name', 'Customer ' || cust,
      'phone', null, 'tax_exempt', 'none', 'tax_ids', '[]'::jsonb),
  'customer_email', null, 'discounts', '[]'::jsonb, 'expires_at', created + 86400, 'invoice', null,
  'invoice_creation', jsonb_build_object('enabled', false, 'invoice_data', jsonb_build_object('account_tax_ids', null,
      'custom_fields', null, 'description', null, 'footer', null, 'issuer', null, 'metadata', '{}'::jsonb,
      'rendering_options', null)))
|| jsonb_build_object(
  'livemode', true, 'locale', null, 'metadata', jsonb_build_object('credits', credits::text, 'plan', 'credits-1000'),
  'mode', 'payment', 'payment_intent', 'pi_' || n, 'payment_link', null, 'payment_method_collection', 'if_required',
  'payment_method_configuration_details', jsonb_build_object('id', 'pmc_1PQ2xRLkdIwHu7ix0Bq7hTfA', 'parent', null),
  'payment_method_options', jsonb_build_object('card', jsonb_build_object('request_three_d_secure', 'automatic')),
  'payment_method_types', '["card", "link"]'::jsonb, 'payment_status', 'paid',
  'permissions', null, 'phone_number_collection', jsonb_build_object('enabled', false), 'recovered_from', null,
  'saved_payment_method_options', jsonb_build_object('allow_redisplay_filters', '["always"]'::jsonb, 'payment_method_remove', null,
      'payment_method_save', null),
  'setup_intent', null, 'shipping_address_collection', null, 'shipping_cost', null, 'shipping_details', null,
  'shipping_options', '[]'::jsonb, 'status', 'complete', 'submit_type', null, 'subscription', null,
  'success_url', 'https://app.example.com/billing/success?session_id={CHECKOUT_SESSION_ID}',
  'total_details', jsonb_build_object('amount_discount', 0, 'amount_shipping', 0, 'amount_tax', 0),
  'ui_mode', 'hosted', 'url', null, 'wallet_options', null)
$$;

CREATE FUNCTION bench.sub_obj(sub text, cust text, status text, created bigint, period_end bigint) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
SELECT jsonb_build_object(
  'id', sub, 'object', 'subscription', 'application', null, 'application_fee_percent', null,
  'automatic_tax', jsonb_build_object('disabled_reason', null, 'enabled', false, 'liability', null),
  'billing_cycle_anchor', created, 'billing_cycle_anchor_config', null, 'billing_mode', jsonb_build_object('type', 'classic'),
  'billing_thresholds', null, 'cancel_at', null, 'cancel_at_period_end', false, 'canceled_at', null,
  'cancellation_details', jsonb_build_object('comment', null, 'feedback', null, 'reason', null),
  'collection_method', 'charge_automatically', 'created', created, 'currency', 'usd', 'customer', 'cus_' || cust,
  'days_until_due', null, 'default_payment_method', 'pm_1PQ2yBLkdIwHu7ixk2Gm9ZkA', 'default_source', null,
  'default_tax_rates', '[]'::jsonb, 'description', null, 'discounts', '[]'::jsonb, 'ended_at', null,
  'invoice_settings', jsonb_build_object('account_tax_ids', null, 'issuer', jsonb_build_object('type', 'self')),
  'items', jsonb_build_object('object', 'list', 'has_more', false, 'total_count', 1,
      'url', '/v1/subscription_items?subscription=' || sub,
      'data', jsonb_build_array(jsonb_build_object('id', 'si_' || sub, 'object', 'subscription_item',
          'billing_thresholds', null, 'created', created, 'current_period_end', period_end,
          'current_period_start', period_end - 2592000, 'discounts', '[]'::jsonb, 'metadata', '{}'::jsonb,
          'price', jsonb_build_object('id', 'price_pro', 'object', 'price', 'active', true, 'billing_scheme', 'per_unit',
              'created', 1717000000, 'currency', 'usd', 'custom_unit_amount', null, 'livemode', true, 'lookup_key', 'pro_monthly',
              'metadata', '{}'::jsonb, 'nickname', 'Pro monthly', 'product', 'prod_QGz1pro',
              'recurring', jsonb_build_object('interval', 'month', 'interval_count', 1, 'meter', null, 'trial_period_days', null,
                  'usage_type', 'licensed'),
              'tax_behavior', 'exclusive', 'tiers_mode', null, 'transform_quantity', null, 'type', 'recurring',
              'unit_amount', 2000, 'unit_amount_decimal', '2000'),
          'quantity', 1, 'subscription', sub, 'tax_rates', '[]'::jsonb))),
  'latest_invoice', 'in_' || sub, 'livemode', true)
|| jsonb_build_object(
  'metadata', jsonb_build_object('customer', cust), 'next_pending_invoice_item_invoice', null, 'on_behalf_of', null,
  'pause_collection', null,
  'payment_settings', jsonb_build_object('payment_method_options', null, 'payment_method_types', null,
      'save_default_payment_method', 'off'),
  'pending_invoice_item_interval', null, 'pending_setup_intent', null, 'pending_update', null, 'schedule', null,
  'start_date', created, 'status', status, 'test_clock', null, 'transfer_data', null, 'trial_end', null,
  'trial_settings', jsonb_build_object('end_behavior', jsonb_build_object('missing_payment_method', 'create_invoice')),
  'trial_start', null)
$$;

CREATE FUNCTION bench.event_body(id text, type text, created bigint, obj jsonb, prev jsonb) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
SELECT jsonb_pretty(jsonb_build_object('id', id, 'object', 'event', 'api_version', '2025-03-31.basil',
  'created', created, 'data', jsonb_strip_nulls(jsonb_build_object('object', obj, 'previous_attributes', prev)),
  'livemode', true, 'pending_webhooks', 1,
  'request', jsonb_build_object('id', 'req_' || substr(md5(id), 1, 14), 'idempotency_key', md5(id || 'k')), 'type', type))
$$;

CREATE FUNCTION bench.sign(body text, t bigint) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
SELECT jsonb_build_object('Content-Type', 'application/json; charset=utf-8',
  'User-Agent', 'Stripe/1.0 (+https://stripe.com/docs/webhooks)', 'Accept', '*/*; q=0.5, application/xml',
  'Cache-Control', 'no-cache', 'Content-Length', octet_length(body)::text, 'Host', 'api.example.com',
  'Stripe-Signature', 't=' || t || ',v1=' || encode(hmac(t || '.' || body, 'whsec_bench_5f0e1c2b8a9d4e7f', 'sha256'), 'hex'))
$$;

-- A run's deliveries, position n = 1..total, by n % 10:
--   1, 3, 7, 9  checkout.session.completed: a new purchase of 1000 credits for a customer w*
--   2, 4, 6, 8  customer.subscription.updated, each newer than the last of its subscription
--   5           an update created between the 2 and the 4 of its subscription, delivered
--               after the 4: out of order (10%; the ledger stores it as stale)
--   0           a retry of position n-3 (10% duplicates)
-- Subscription s gets its 5 updates (r = 2, 4, 5, 6, 8) in blocks of 10 positions
-- s, s+20, s+40, s+60, s+80: ~200 deliveries apart, not all in flight at once.
-- Event, session, payment and subscription ids carry the run's tag; bodies are made once
-- (bench.tmpl, with placeholders) and only the ids are filled in per run; each delivery
-- is signed at generation time (now; the tolerance is 300 s and a run ~10 s).
CREATE TABLE bench.tmpl (r int PRIMARY KEY, body text NOT NULL);
INSERT INTO bench.tmpl (r, body)
SELECT r, CASE WHEN r IN (1, 3, 7, 9) THEN
           bench.event_body('evt_@TAG@_@N@', 'checkout.session.completed', t0 - 60,
                            bench.checkout_obj('@TAG@_@N@', 'w@C@', 1000, t0 - 120), NULL)
       ELSE
           bench.event_body('evt_@TAG@_@N@', 'customer.subscription.updated',
                            t0 - 60 + CASE r WHEN 2 THEN 1 WHEN 4 THEN 4 WHEN 5 THEN 3 WHEN 6 THEN 5 ELSE 6 END,
                            bench.sub_obj('sub_@TAG@_@B@', 'w@C@', 'active', t0 - 3600, t0 + 2592000),
                            jsonb_build_object('status', 'incomplete'))
       END
  FROM generate_series(1, 9) r, (SELECT extract(epoch FROM now())::bigint AS t0) t;

CREATE UNLOGGED TABLE bench.deliv (n int PRIMARY KEY, event_id text NOT NULL, headers jsonb NOT NULL, body text NOT NULL);
ALTER TABLE bench.deliv ALTER body SET STORAGE PLAIN;  -- read uncompressed, inline
CREATE SEQUENCE bench.deliv_seq;

CREATE FUNCTION bench.gen_deliveries(tag text, total int) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE t bigint := extract(epoch FROM now())::bigint;
BEGIN
    TRUNCATE bench.deliv;
    INSERT INTO bench.deliv (n, event_id, headers, body)
    SELECT n, 'evt_' || tag || '_' || n, bench.sign(b.body, t), b.body
      FROM generate_series(1, total) n
      JOIN bench.tmpl m ON m.r = n % 10,
      LATERAL (SELECT n / 10 - CASE m.r WHEN 4 THEN 20 WHEN 5 THEN 40 WHEN 6 THEN 60 WHEN 8 THEN 80 ELSE 0 END AS s) x,
      LATERAL (SELECT replace(replace(replace(replace(m.body, '@TAG@', tag), '@N@', n::text), '@B@', x.s::text), '@C@',
                      CASE WHEN m.r IN (1, 3, 7, 9) THEN ((n / 10) * 7919 + m.r) % 10000 + 1
                           ELSE (x.s % 10000 + 10000) % 10000 + 1 END::text)
                 AS body) b;
    INSERT INTO bench.deliv (n, event_id, headers, body)
    SELECT d.n + 3, d.event_id, d.headers, d.body FROM bench.deliv d WHERE d.n % 10 = 7 AND d.n + 3 <= total;
    PERFORM setval('bench.deliv_seq', 1, false);
    RETURN total;
END $$;

-- Active 'pro' subscriptions for c1..c5000, as Stripe would announce them, ingested by both
-- contenders (their events tables then have rows when the statistics are taken: a plan
-- made on an empty table scans it whole).
DO $$
DECLARE t0 bigint := extract(epoch FROM now())::bigint; bad int; bad_peer int;
BEGIN
    CREATE TEMP TABLE seed_events ON COMMIT DROP AS
    SELECT b.body, bench.sign(b.body, t0) AS headers
      FROM generate_series(1, 5000) i,
           LATERAL (SELECT bench.event_body('evt_seed_' || i, 'customer.subscription.created', t0 - 100,
                        bench.sub_obj('sub_seed_' || i, 'c' || i, 'active', t0 - 100, t0 + 31536000), NULL) AS body) b;
    SELECT count(*) FILTER (WHERE r.status <> 'applied') INTO bad
      FROM seed_events e, LATERAL billing.ingest('stripe-bench', e.headers, e.body) r;
    SELECT count(*) FILTER (WHERE peer.pl_ingest('stripe-bench', e.headers, e.body) <> 'applied') INTO bad_peer
      FROM seed_events e;
    IF bad > 0 OR bad_peer > 0 THEN RAISE EXCEPTION '% and % seed subscriptions not applied', bad, bad_peer; END IF;
END $$;

-- ---- row-level security: three documents per customer ----
CREATE TABLE bench.docs_ext (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, customer text NOT NULL, title text NOT NULL);
INSERT INTO bench.docs_ext (customer, title) SELECT 'c' || i, 'document ' || j || ' of c' || i
  FROM generate_series(1, :customers) i, generate_series(1, 3) j;
CREATE INDEX ON bench.docs_ext (customer);
CREATE TABLE bench.docs_pl (LIKE bench.docs_ext INCLUDING ALL);
CREATE TABLE bench.docs_floor (LIKE bench.docs_ext INCLUDING ALL);
INSERT INTO bench.docs_pl (customer, title) SELECT customer, title FROM bench.docs_ext;
INSERT INTO bench.docs_floor (customer, title) SELECT customer, title FROM bench.docs_ext;
ALTER TABLE bench.docs_ext ENABLE ROW LEVEL SECURITY;
ALTER TABLE bench.docs_pl ENABLE ROW LEVEL SECURITY;
ALTER TABLE bench.docs_floor ENABLE ROW LEVEL SECURITY;
CREATE POLICY paying ON bench.docs_ext USING (billing.can_access(customer));
CREATE POLICY paying ON bench.docs_pl USING (peer.pl_can_access(customer));
CREATE POLICY paying ON bench.docs_floor USING (EXISTS (
    SELECT FROM peer.pl_accounts a WHERE a.id = customer AND NOT a.frozen
       AND (a.balance > 0 OR EXISTS (SELECT FROM peer.pl_subscriptions s WHERE s.customer = a.id
                                        AND s.status IN ('active', 'trialing') AND s.period_end > now()))));
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bench_app') THEN CREATE ROLE bench_app LOGIN; END IF;
END $$;
GRANT billing_app TO bench_app;
GRANT USAGE ON SCHEMA bench, peer TO bench_app;
GRANT SELECT ON bench.docs_ext, bench.docs_pl, bench.docs_floor, peer.pl_accounts, peer.pl_subscriptions TO bench_app;

VACUUM ANALYZE;
