-- webhook ingest: the PL/pgSQL peer (pgcrypto HMAC, ON CONFLICT dedupe, applies top-ups and subscriptions)
-- Deliveries are precomputed per run (bench.gen_deliveries); each call takes the next one.
SELECT peer.pl_ingest('stripe-bench', d.headers, d.body) FROM bench.deliv d
 WHERE d.n = (SELECT nextval('bench.deliv_seq'));
