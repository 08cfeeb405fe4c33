-- uniform debit: the floor's statement inside a function declared as the extension's (bench/peers.sql)
-- -D run=<n> -D k=0 -D ncust=<customers to pick from>
\set cid random(1, :ncust)
\set k :k + 1
\set key :run * 100000000000 + :client_id * 1000000000 + :k
SELECT peer.floor_fn('c' || :cid::text, 1, 'd' || :key::text);
