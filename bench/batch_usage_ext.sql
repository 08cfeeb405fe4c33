-- batches: billing.record_usage_many of :n usages (2,500 tokens at 3 credits per 1,000)
-- -D run=<n> -D k=0 -D ncust=<customers to pick from> -D n=<items per batch>
\set k :k + 1
\set key :run * 100000000000 + :client_id * 1000000000 + :k * 10000
SELECT count(*) FILTER (WHERE sqlstate IS NULL) FROM billing.record_usage_many(
    ARRAY(SELECT 'c' || (1 + floor(random() * :ncust))::int FROM generate_series(1, :n)),
    array_fill('llm_tokens'::text, ARRAY[:n::int]),
    array_fill(2500::bigint, ARRAY[:n::int]),
    ARRAY(SELECT 'v' || (:key::bigint + g) FROM generate_series(1, :n) g));
