-- uniform/hot debit: the floor (conditional UPDATE + journal INSERT + key INSERT, one statement)
-- -D run=<n> -D k=0 -D ncust=<customers to pick from> (1 = the hot customer c1)
\set cid random(1, :ncust)
\set k :k + 1
\set key :run * 100000000000 + :client_id * 1000000000 + :k
WITH u AS (UPDATE peer.floor_accounts SET balance = balance - 1, seq = seq + 1
            WHERE id = 'c' || :cid::text AND balance >= 1 RETURNING id, seq, balance),
     j AS (INSERT INTO peer.floor_journal (customer, seq, kind, amount, balance_after)
           SELECT id, seq, 'debit', -1, balance FROM u)
INSERT INTO peer.floor_keys (customer, key, seq) SELECT id, 'd' || :key::text, seq FROM u;
