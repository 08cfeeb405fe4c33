-- hot customer, slotted: every client debits :acct, whose credits are spread over slots
-- ('hot': 16, 'hot64': 64; billing.set_slots in setup.sql); fresh key per call
-- -D run=<n> -D k=0 -D acct=<customer>
\set k :k + 1
\set key :run * 100000000000 + :client_id * 1000000000 + :k
SELECT * FROM billing.debit(:acct, 1, 'd' || :key::text);
