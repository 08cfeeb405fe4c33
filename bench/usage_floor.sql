-- record_usage: the floor (fixed 7 credits: balance UPDATE + journal INSERT + usage row keyed by the key)
-- -D run=<n> -D k=0 -D ncust=<customers to pick from> (1 = the hot customer c1)
\set cid random(1, :ncust)
\set k :k + 1
\set key :run * 100000000000 + :client_id * 1000000000 + :k
WITH u AS (UPDATE peer.floor_accounts SET balance = balance - 7, seq = seq + 1
            WHERE id = 'c' || :cid::text AND balance >= 7 RETURNING id, seq, balance),
     j AS (INSERT INTO peer.floor_journal (customer, seq, kind, amount, balance_after)
           SELECT id, seq, 'debit', -7, balance FROM u)
INSERT INTO peer.floor_usage (customer, key, meter, quantity, credits, seq)
SELECT id, 'u' || :key::text, 'llm_tokens', 2500, 7, seq FROM u;
