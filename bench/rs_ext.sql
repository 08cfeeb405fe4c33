-- reserve + settle (two transactions, the streamed-LLM pattern): the extension
-- -D run=<n> -D k=0 -D ncust=<customers to pick from> (1 = the hot customer c1)
\set cid random(1, :ncust)
\set k :k + 1
\set key :run * 100000000000 + :client_id * 1000000000 + :k
SELECT billing.reserve('c' || :cid::text, 100, 'r' || :key::text) AS hold \gset
SELECT entry_id FROM billing.settle(:hold::uuid, 37);
