-- webhook ingest: INSERT INTO billing.inbox (the receiver's insert-only path)
-- Deliveries are precomputed per run (bench.gen_deliveries); each call takes the next one.
INSERT INTO billing.inbox (endpoint, headers, body)
SELECT 'stripe-bench', d.headers, d.body FROM bench.deliv d WHERE d.n = (SELECT nextval('bench.deliv_seq'));
