-- The billing demo: one customer's story, told in SQL. Run by scripts/setup.sh.
-- The demo moves the ledger's clock with billing.clock (superuser-only) to show expiry.
\pset footer off
\set ON_ERROR_STOP 1
SET billing.clock = '2026-11-01 09:00:00+00';

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
SET billing.clock = '2026-11-02 08:00:00+00';
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
