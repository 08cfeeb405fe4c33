-- reserve + settle: the floor (hold row + balance + journal + key, then hold + balance + journal)
-- -D run=<n> -D k=0 -D ncust=<customers to pick from> (1 = the hot customer c1)
\set cid random(1, :ncust)
\set k :k + 1
\set key :run * 100000000000 + :client_id * 1000000000 + :k
WITH u AS (UPDATE peer.floor_accounts SET balance = balance - 100, seq = seq + 1
            WHERE id = 'c' || :cid::text AND balance >= 100 RETURNING id, seq, balance),
     j AS (INSERT INTO peer.floor_journal (customer, seq, kind, amount, balance_after)
           SELECT id, seq, 'hold', -100, balance FROM u),
     k AS (INSERT INTO peer.floor_keys (customer, key, seq) SELECT id, 'r' || :key::text, seq FROM u)
INSERT INTO peer.floor_holds (customer, amount) SELECT id, 100 FROM u RETURNING id AS hold \gset
WITH h AS (UPDATE peer.floor_holds SET settled = 37 WHERE id = :hold::bigint AND settled IS NULL RETURNING customer, amount),
     u AS (UPDATE peer.floor_accounts a SET balance = a.balance + h.amount - 37, seq = a.seq + 1
             FROM h WHERE a.id = h.customer RETURNING a.id, a.seq, a.balance)
INSERT INTO peer.floor_journal (customer, seq, kind, amount, balance_after) SELECT id, seq, 'settle', 63, balance FROM u;
