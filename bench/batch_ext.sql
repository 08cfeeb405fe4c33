-- batches: billing.debit_many of :n debits of 1 credit, customers drawn at random
-- -D run=<n> -D k=0 -D ncust=<customers to pick from> -D n=<items per batch>
\set k :k + 1
\set key :run * 100000000000 + :client_id * 1000000000 + :k * 10000
SELECT count(*) FILTER (WHERE sqlstate IS NULL) FROM billing.debit_many(
    ARRAY(SELECT 'c' || (1 + floor(random() * :ncust))::int FROM generate_series(1, :n)),
    array_fill(1::bigint, ARRAY[:n::int]),
    ARRAY(SELECT 'b' || (:key::bigint + g) FROM generate_series(1, :n) g));
