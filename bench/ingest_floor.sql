-- webhook ingest: the floor, plain INSERT ... ON CONFLICT DO NOTHING of the raw event (no verification;
-- the event id handed over precomputed, as if the receiver had parsed it)
-- Deliveries are precomputed per run (bench.gen_deliveries); each call takes the next one.
INSERT INTO peer.floor_events (event_id, headers, body)
SELECT d.event_id, d.headers, d.body FROM bench.deliv d WHERE d.n = (SELECT nextval('bench.deliv_seq'))
ON CONFLICT (event_id) DO NOTHING;
