-- hot customer, 64 slots: every client debits 'hot64', whose credits are spread over 64
-- accounts (billing.set_slots('hot64', 64) in setup.sql); fresh key per call
\set k :k + 1
\set key :run * 100000000000 + :client_id * 1000000000 + :k
SELECT * FROM billing.debit('hot64', 1, 'd' || :key::text);
