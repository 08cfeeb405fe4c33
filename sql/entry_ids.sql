-- billing 0.6.0: journal entry ids that say where their entry is.
--
-- refund(entry_id) is the one call that finds an entry by its id alone. A unique B-tree
-- over every entry id served it, and every debit paid an index insert for it (~75 bytes
-- of WAL and a dirtied leaf page, on the path that matters most). An entry id now names
-- its account and its place in that account's journal: 0xff, the account's number
-- (customers.num, 40 bits), the uuid version 8, the entry's seq (40 bits) and random
-- bits (src/ledger/entry_id.rs has the layout). refund() reads the account by number and
-- the entry by the journal's primary key. Ids made before their seq is known (transfer
-- pairs), ids of numbers or seqs beyond 40 bits, and every id from before
-- 0.6.0 are random (version 7, below 'ff...') and stay in a partial unique index.

CREATE SEQUENCE billing.customer_num;
SELECT pg_catalog.pg_extension_config_dump('billing.customer_num', '');
-- A volatile default: adding the column numbers every existing customer (one rewrite).
ALTER TABLE billing.customers ADD COLUMN num bigint NOT NULL DEFAULT nextval('billing.customer_num');
ALTER SEQUENCE billing.customer_num OWNED BY billing.customers.num;
COMMENT ON COLUMN billing.customers.num IS 'The account''s number, carried by the ids of its journal entries.';
-- Not unique: an index that does not lead with the customer could not be unique under a
-- distributed (Citus) customers table. Lookups also match the whole entry id, and
-- verify() reports a number used twice.
CREATE INDEX customers_num ON billing.customers (num);

DROP INDEX billing.journal_entry_id;
CREATE UNIQUE INDEX journal_entry_id ON billing.journal (entry_id)
 WHERE entry_id < 'ff000000-0000-0000-0000-000000000000';

-- verify(): the checks so far, plus those of the entry ids.
ALTER FUNCTION billing.verify() RENAME TO _verify_slots;
REVOKE ALL ON FUNCTION billing._verify_slots() FROM PUBLIC, billing_reader;
CREATE FUNCTION billing.verify()
RETURNS TABLE (customer text, check_name text, expected bigint, actual bigint, detail text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
SELECT * FROM billing._verify_slots()
UNION ALL
-- a located entry id names its own account's number and its own seq
SELECT j.customer, 'entry_id', j.seq, ('x' || substr(replace(j.entry_id::text, '-', ''), 18, 10))::bit(40)::bigint,
       'entry ' || j.entry_id || ' does not name account ' || c.num || ', seq ' || j.seq
  FROM billing.journal j JOIN billing.customers c ON c.customer = j.customer
 WHERE j.entry_id >= 'ff000000-0000-0000-0000-000000000000'
   AND substr(replace(j.entry_id::text, '-', ''), 1, 12) || substr(replace(j.entry_id::text, '-', ''), 18, 10)
       <> 'ff' || lpad(to_hex(c.num), 10, '0') || lpad(to_hex(j.seq), 10, '0')
UNION ALL
-- the grant the customer row keeps as first in spending order (sql/head.sql) is: it has
-- that remainder, and no other open grant with credits comes before it
SELECT c.customer, 'first_grant', c.draw_left, g.remaining - c.draw, 'grant ' || c.draw_grant
  FROM billing.customers c
  LEFT JOIN billing.grants g ON g.customer = c.customer AND g.id = c.draw_grant AND g.open
 WHERE c.draw_left IS NOT NULL
   AND (g.id IS NULL OR g.remaining - c.draw <> c.draw_left OR c.draw_left <= 0
        OR EXISTS (SELECT FROM billing._grants_now o
                    WHERE o.customer = c.customer AND o.open AND o.remaining > 0 AND o.id <> g.id
                      AND (o.expires_at, -o.priority, o.seq) < (g.expires_at, -g.priority, g.seq)))
UNION ALL
-- an account number names one account
SELECT min(c.customer), 'account_number', 1, count(*), 'number ' || c.num || ' is on ' || string_agg(c.customer, ', ')
  FROM billing.customers c
 GROUP BY c.num
HAVING count(*) > 1
$$;
COMMENT ON FUNCTION billing.verify IS 'Recomputes every balance and grant remainder from the journal; one row per inconsistency.';
REVOKE ALL ON FUNCTION billing.verify() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION billing.verify() TO billing_reader;

-- The journal entry with this id, found as refund() finds it (by the account's number and
-- the entry's seq, or through the partial index): what `WHERE entry_id = $1` on the
-- journal would return, without scanning it.
CREATE FUNCTION billing.entry(entry_id uuid) RETURNS SETOF billing.journal
LANGUAGE sql STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
SELECT j.* FROM billing.customers c JOIN billing.journal j ON j.customer = c.customer
 WHERE $1 >= 'ff000000-0000-0000-0000-000000000000'::uuid
   AND c.num = ('x' || substr(replace($1::text, '-', ''), 3, 10))::bit(40)::bigint
   AND j.seq = ('x' || substr(replace($1::text, '-', ''), 18, 10))::bit(40)::bigint
   AND j.entry_id = $1
UNION ALL
SELECT j.* FROM billing.journal j
 WHERE j.entry_id = $1 AND j.entry_id < 'ff000000-0000-0000-0000-000000000000'::uuid
$$;
COMMENT ON FUNCTION billing.entry IS 'The journal entry with this id (by the account number and seq the id carries), without scanning the journal.';
REVOKE ALL ON FUNCTION billing.entry(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION billing.entry(uuid) TO billing_reader;
