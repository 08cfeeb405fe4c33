-- The billing demo: one customer's story, told in SQL. Run by scripts/setup.sh.
-- The demo moves the ledger's clock with billing.clock (superuser-only) to show expiry.
-- The clock holds for one transaction (SET LOCAL): each instant is a transaction, and
-- ON_ERROR_ROLLBACK keeps the refusals the demo shows from ending one.
\pset footer off
\set ON_ERROR_STOP 1
\set ON_ERROR_ROLLBACK on
BEGIN;
SET LOCAL billing.clock = '2026-11-01 09:00:00+00';

\echo '\n== 1. Ada buys 10 USD of credits (1,000 credits, never expire) and gets a 200-credit promo that expires tonight'
SELECT billing.grant('ada', 1000, 'checkout:cs_001', 'purchase') AS purchase_grant \gset
SELECT billing.grant('ada', 200, 'promo:welcome', 'promotion', '2026-11-01 23:59:59+00', 10) AS promo_grant \gset
SELECT billing.balance('ada') AS balance;

\echo '\n== 2. An LLM call reserves 300 credits before streaming; the answer cost 120'
SELECT billing.reserve('ada', 300, 'req:7f3a:hold', '10 minutes') AS hold \gset
SELECT billing.balance('ada') AS balance_while_streaming;
SELECT balance_after AS balance_after_settle FROM billing.settle(:'hold', 120);

\echo '\n== 3. A flaky client retries a 250-credit debit with the same key: charged once'
SELECT balance_after, replayed FROM billing.debit('ada', 250, 'req:8c21', '{"model": "gpt-x"}');
SELECT entry_id AS debit_entry, balance_after, replayed FROM billing.debit('ada', 250, 'req:8c21', '{"model": "gpt-x"}') \gset
SELECT :balance_after AS balance_after, :'replayed' AS replayed;
\echo 'the same key with a different amount is refused (BL002):'
\set ON_ERROR_STOP 0
SELECT * FROM billing.debit('ada', 999, 'req:8c21');
\set ON_ERROR_STOP 1

\echo '\n== 4. The 250-credit call failed upstream: refund it; the credits go back to the grants they came from'
SELECT balance_after, replayed FROM billing.refund(:'debit_entry');
SELECT source, granted, used, refunded, expired, remaining FROM billing.grant_status WHERE customer = 'ada' ORDER BY source;

\echo '\n== 5. Midnight passes: what is left of the promo expires at that instant, no job needed'
COMMIT;
BEGIN;
SET LOCAL billing.clock = '2026-11-02 08:00:00+00';
SELECT billing.balance('ada') AS balance_next_morning,
       billing.balance_at('ada', '2026-11-01 12:00:00+00') AS balance_yesterday_noon;
SELECT billing.maintenance() AS expiry_rows_written;

\echo '\n== 6. Spending more than is there is refused (BL001), and changes nothing'
\set ON_ERROR_STOP 0
SELECT * FROM billing.debit('ada', 5000, 'req:huge');
\set ON_ERROR_STOP 1

\echo '\n== 7. billing.verify() recomputes every balance and grant from the journal: no rows = consistent'
SELECT count(*) AS inconsistencies FROM billing.verify();

\echo '\n== 8. The journal (append-only)'
SELECT seq, to_char(at, 'MM-DD HH24:MI') AS at, kind, amount, balance_after, idempotency_key
  FROM billing.journal WHERE customer = 'ada' ORDER BY seq;
\echo 'and it cannot be rewritten:'
\set ON_ERROR_STOP 0
DELETE FROM billing.journal;
\set ON_ERROR_STOP 1

\echo '\n================ Part 2: a subscriber, as Stripe webhooks arrive ================'
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pgcrypto;
DO $$ BEGIN
  PERFORM billing.add_endpoint('stripe-main', 'stripe');
  PERFORM billing.add_secret('stripe-main', 'whsec_demo');
  PERFORM billing.define_plan('pro', '{chat,images}', 5000, '3 days', 'price_pro');
  PERFORM billing.define_plan('max', '{chat,images,video}', 20000, '3 days', 'price_max');
  PERFORM billing.define_meter('llm_tokens', 3, 1000);
  PERFORM billing.link_customer('bea', 'cus_bea');
END $$;
-- What a receiver does with each delivery; the signature is Stripe's scheme, computed here.
CREATE FUNCTION pg_temp.deliver(id text, type text, created timestamptz, obj jsonb) RETURNS text LANGUAGE sql AS $$
  WITH b AS (SELECT jsonb_build_object('id', id, 'object', 'event', 'type', type,
                 'created', extract(epoch FROM created)::int8, 'data', jsonb_build_object('object', obj))::text AS body,
                    -- signed at delivery: now, as the ledger sees it
                    extract(epoch FROM current_setting('billing.clock')::timestamptz)::int8 AS t)
  SELECT r.status || ': ' || coalesce(r.detail, '') FROM b, billing.ingest('stripe-main',
    jsonb_build_object('Stripe-Signature', 't=' || b.t || ',v1=' || encode(hmac(b.t || '.' || b.body, 'whsec_demo', 'sha256'), 'hex')), b.body) r
$$;
CREATE FUNCTION pg_temp.show(label text) RETURNS TABLE (moment text, allowed boolean, reason text, plan text, balance bigint) LANGUAGE sql AS $$
  SELECT label, a.allowed, a.reason, a.plan, a.balance FROM billing.access('bea') a
$$;
CREATE FUNCTION pg_temp.sub(status text, period_end timestamptz, price text) RETURNS jsonb LANGUAGE sql AS $$
  SELECT jsonb_build_object('id', 'sub_bea', 'customer', 'cus_bea', 'status', status,
     'trial_end', extract(epoch FROM timestamptz '2026-11-15')::int8,
     'items', jsonb_build_object('data', jsonb_build_array(jsonb_build_object(
        'price', jsonb_build_object('id', price), 'quantity', 1,
        'current_period_start', extract(epoch FROM period_end - interval '1 month')::int8,
        'current_period_end', extract(epoch FROM period_end)::int8))))
$$;
CREATE FUNCTION pg_temp.sub(status text, period_end timestamptz) RETURNS jsonb LANGUAGE sql AS $$
  SELECT pg_temp.sub(status, period_end, 'price_pro')
$$;
-- A renewal invoice: one line billing the plan for the month ending at period_end.
CREATE FUNCTION pg_temp.invoice(id text, period_end timestamptz) RETURNS jsonb LANGUAGE sql AS $$
  SELECT jsonb_build_object('id', id, 'customer', 'cus_bea', 'billing_reason', 'subscription_cycle',
     'parent', jsonb_build_object('subscription_details', jsonb_build_object('subscription', 'sub_bea')),
     'lines', jsonb_build_object('data', jsonb_build_array(jsonb_build_object('price', jsonb_build_object('id', 'price_pro'),
        'amount', 2000, 'quantity', 1, 'proration', false,
        'period', jsonb_build_object('start', extract(epoch FROM period_end - interval '1 month')::int8,
                                     'end', extract(epoch FROM period_end)::int8)))))
$$;
-- A plan change's invoice (Stripe's default proration): a credit for the unused time on
-- the old price, a charge for the rest of the period on the new one.
CREATE FUNCTION pg_temp.change(id text, at timestamptz, from_price text, to_price text, credit bigint, charge bigint, period_end timestamptz)
RETURNS jsonb LANGUAGE sql AS $$
  SELECT jsonb_build_object('id', id, 'customer', 'cus_bea', 'billing_reason', 'subscription_update',
     'parent', jsonb_build_object('subscription_details', jsonb_build_object('subscription', 'sub_bea')),
     'lines', jsonb_build_object('data', jsonb_build_array(
        jsonb_build_object('price', jsonb_build_object('id', from_price), 'amount', -credit, 'quantity', 1, 'proration', true,
           'period', jsonb_build_object('start', extract(epoch FROM at)::int8, 'end', extract(epoch FROM period_end)::int8)),
        jsonb_build_object('price', jsonb_build_object('id', to_price), 'amount', charge, 'quantity', 1, 'proration', true,
           'period', jsonb_build_object('start', extract(epoch FROM at)::int8, 'end', extract(epoch FROM period_end)::int8)))))
$$;

\echo '\n== 9. Bea starts a 14-day trial'
COMMIT;
BEGIN;
SET LOCAL billing.clock = '2026-11-01 09:00:00+00';
SELECT pg_temp.deliver('evt_b1', 'customer.subscription.created', '2026-11-01 09:00+00', pg_temp.sub('trialing', '2026-11-15'));
SELECT * FROM pg_temp.show('in the trial');

\echo '\n== 10. The trial converts: the first invoice is paid (the plan grants 5000 credits for the month)'
COMMIT;
BEGIN;
SET LOCAL billing.clock = '2026-11-15 00:00:00+00';
SELECT pg_temp.deliver('evt_b2', 'invoice.paid', '2026-11-15 00:00+00', pg_temp.invoice('in_1', '2026-12-15'));
SELECT pg_temp.deliver('evt_b3', 'customer.subscription.updated', '2026-11-15 00:00:01+00', pg_temp.sub('active', '2026-12-15'));
SELECT pg_temp.deliver('evt_b3', 'customer.subscription.updated', '2026-11-15 00:00:01+00', pg_temp.sub('active', '2026-12-15'));
SELECT * FROM pg_temp.show('paid');
\echo 'an LLM call is charged through the meter: 2,500 tokens at 3 credits per 1,000 (the half credit carries over)'
SELECT credits, balance_after FROM billing.record_usage('bea', 'llm_tokens', 2500, 'req:b1');

\echo '\n== 11. The renewal fails on Dec 15: paid through the period, then a grace period of 3 days'
COMMIT;
BEGIN;
SET LOCAL billing.clock = '2026-12-15 00:00:00+00';
SELECT pg_temp.deliver('evt_b4', 'invoice.payment_failed', '2026-12-15 00:00+00', pg_temp.invoice('in_2', '2027-01-15'));
SELECT pg_temp.deliver('evt_b5', 'customer.subscription.updated', '2026-12-15 00:00:01+00', pg_temp.sub('past_due', '2027-01-15'));
SELECT * FROM pg_temp.show('payment failed');
COMMIT;
BEGIN;
SET LOCAL billing.clock = '2026-12-18 00:00:00+00';
SELECT * FROM pg_temp.show('grace over');
\echo 'time alone changed that; maintenance() (pg_cron) notes it for the outbox:'
SELECT billing.maintenance() AS expiry_rows_written;
\echo 'a charge is refused with the reason''s SQLSTATE (BL004):'
\set ON_ERROR_STOP 0
SELECT * FROM billing.charge('bea', 'chat', 10, 'req:b2');
\set ON_ERROR_STOP 1

\echo '\n== 12. Bea updates her card: the retried invoice is paid; access is back'
COMMIT;
BEGIN;
SET LOCAL billing.clock = '2026-12-19 00:00:00+00';
SELECT pg_temp.deliver('evt_b6', 'invoice.paid', '2026-12-19 00:00+00', pg_temp.invoice('in_2', '2027-01-15'));
SELECT * FROM pg_temp.show('recovered');
\echo 'a late, older event (the past_due update, delivered again with another id) is stale and changes nothing:'
SELECT pg_temp.deliver('evt_b5_late', 'customer.subscription.updated', '2026-12-15 00:00:00+00', pg_temp.sub('past_due', '2027-01-15'));
SELECT * FROM pg_temp.show('after the stale event');

\echo '\n== 13. Bea upgrades to max (20,000 credits) on Dec 31, with 15 of the period''s 31 days left, and pays the proration'
COMMIT;
BEGIN;
SET LOCAL billing.clock = '2026-12-31 00:00:00+00';
SELECT pg_temp.deliver('evt_b7', 'customer.subscription.updated', '2026-12-31 00:00+00', pg_temp.sub('active', '2027-01-15', 'price_max'));
SELECT pg_temp.deliver('evt_b8', 'invoice.paid', '2026-12-31 00:00:01+00',
       pg_temp.change('in_3', '2026-12-31', 'price_pro', 'price_max', 968, 3871, '2027-01-15'));
\echo 'the period is topped up by (20,000 - 5,000) x 15/31 = 7,258, not by a whole plan:'
SELECT period_start::date, period_end::date, base, ceiling, allowance, granted FROM billing.subscription_periods WHERE customer = 'bea' AND granted > 0;
SELECT * FROM pg_temp.show('upgraded');

\echo '\n== 14. Bea downgrades to pro on Jan 5; the $0 invoice is paid: nothing granted, nothing taken back'
COMMIT;
BEGIN;
SET LOCAL billing.clock = '2027-01-05 00:00:00+00';
SELECT pg_temp.deliver('evt_b9', 'customer.subscription.updated', '2027-01-05 00:00+00', pg_temp.sub('active', '2027-01-15', 'price_pro'));
SELECT pg_temp.deliver('evt_b10', 'invoice.paid', '2027-01-05 00:00:01+00',
       pg_temp.change('in_4', '2027-01-05', 'price_max', 'price_pro', 2581, 645, '2027-01-15'));
\echo 'up again on Jan 6 (paid: + 15,000 x 9/31) and down on Jan 7: however often she flips, the period never passes the largest plan held in it (20,000):'
SELECT pg_temp.deliver('evt_b11', 'invoice.paid', '2027-01-06 00:00+00', pg_temp.change('in_5', '2027-01-06', 'price_pro', 'price_max', 580, 2322, '2027-01-15'));
SELECT pg_temp.deliver('evt_b12', 'invoice.paid', '2027-01-07 00:00+00', pg_temp.change('in_6', '2027-01-07', 'price_max', 'price_pro', 2064, 516, '2027-01-15'));
SELECT pg_temp.deliver('evt_b13', 'customer.subscription.updated', '2027-01-07 00:00:01+00', pg_temp.sub('active', '2027-01-15', 'price_pro'));
SELECT base, ceiling, allowance, granted FROM billing.subscription_periods WHERE customer = 'bea' AND granted > 0;
SELECT * FROM pg_temp.show('downgraded');
\echo 'the same invoice delivered again is a duplicate:'
SELECT pg_temp.deliver('evt_b8', 'invoice.paid', '2026-12-31 00:00:01+00',
       pg_temp.change('in_3', '2026-12-31', 'price_pro', 'price_max', 968, 3871, '2027-01-15'));

\echo '\n== 15. What the application hears, through the outbox (exactly once, claimed with SKIP LOCKED)'
SELECT id, kind, payload FROM billing.claim_outbox(20) ORDER BY id;
SELECT event_id, type, status FROM billing.events ORDER BY received_at, event_id;

\echo '\n================ Part 3: a hot customer, spread over slots ================'
\echo '== 16. Acme runs many agents at once: its credits are spread over 4 slots, each with its own lock'
SELECT billing.grant('acme', 100000, 'acme-contract', 'contract');
SELECT billing.set_slots('acme', 4);
SELECT customer, balance FROM billing.customers WHERE customer = 'acme' OR slot_of = 'acme' ORDER BY customer;
\echo 'each call goes to the slot its key hashes to; a retry meets its first entry; the balance is the sum:'
SELECT count(*) AS debits FROM generate_series(1, 40) i, LATERAL billing.debit('acme', 25, 'agent-call-' || i) d;
SELECT replayed FROM billing.debit('acme', 25, 'agent-call-7');
SELECT customer, balance FROM billing.customers WHERE customer = 'acme' OR slot_of = 'acme' ORDER BY customer;
SELECT billing.balance('acme') AS acme_balance;
\echo 'a call bigger than its slot gathers every slot, runs on the whole balance, and spreads again:'
SELECT balance_after FROM billing.debit('acme', 60000, 'big-batch-job');
SELECT customer, balance FROM billing.customers WHERE customer = 'acme' OR slot_of = 'acme' ORDER BY customer;
SELECT billing.balance('acme') AS acme_balance;
SELECT count(*) AS inconsistencies FROM billing.verify();
COMMIT;
