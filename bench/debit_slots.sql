-- hot customer, slotted: every client debits 'hot', whose credits are spread over 16
-- accounts (billing.set_slots('hot', 16) in setup.sql); fresh key per call
\set k :k + 1
\set key :run * 100000000000 + :client_id * 1000000000 + :k
SELECT * FROM billing.debit('hot', 1, 'd' || :key::text);
