-- webhook ingest: billing.ingest
-- Deliveries are precomputed per run (bench.gen_deliveries); each call takes the next one.
SELECT r.status FROM bench.deliv d, billing.ingest('stripe-bench', d.headers, d.body) r
 WHERE d.n = (SELECT nextval('bench.deliv_seq'));
