-- uniform/hot debit: the PL/pgSQL peer
-- -D run=<n> -D k=0 -D ncust=<customers to pick from> (1 = the hot customer c1)
\set cid random(1, :ncust)
\set k :k + 1
\set key :run * 100000000000 + :client_id * 1000000000 + :k
SELECT * FROM peer.pl_debit('c' || :cid::text, 1, 'd' || :key::text);
