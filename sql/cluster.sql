-- billing: scale-out on Citus (SPEC section 6; README "Scale out on Citus").
--
-- billing.distribute(), run once on the coordinator after CREATE EXTENSION citus and
-- CREATE EXTENSION billing, turns the single-server schema into a cluster's. The schema
-- is the same on one server: every per-customer table leads its keys with the customer,
-- and what is deduplicated by a provider's id lives in a table keyed by that id.
--   - per customer, distributed by customer and co-located with billing.customers (the
--     ledger, plans in force, usage, disputes): one customer's rows are on one shard
--     group, so a call that names a customer runs on one worker;
--   - keyed by the provider's id, distributed by it: events (and their variants), the
--     last event of each provider object, provider customers, purchases and their refunds;
--   - configuration, the outbox and its waiters' leases: reference tables, a copy on every node
--     (the outbox is claimed with FOR UPDATE SKIP LOCKED, which Citus allows on a
--     reference table and not across shards; a row is written to every node, in the
--     writer's transaction);
--   - billing.inbox stays a plain table on every node: it never holds a row (its trigger
--     ingests the delivery and returns NULL), and on a shard the trigger could not run the
--     ingestion's distributed statements.
-- The functions that name a customer first are delegated by it: a call outside a
-- transaction block runs on the worker holding the customer. Inside one, it runs where
-- it was called and each statement goes to that customer's shard.
CREATE FUNCTION billing.distribute() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t text;
    f text;
    n bigint;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
        RAISE EXCEPTION 'billing.distribute() needs Citus, and this database has no citus extension'
            USING ERRCODE = '55000',
                  HINT = 'Load citus (shared_preload_libraries), CREATE EXTENSION citus on every node and add the workers, then call billing.distribute() on the coordinator.';
    END IF;
    IF (SELECT groupid FROM pg_catalog.pg_dist_local_group) <> 0 THEN
        RAISE EXCEPTION 'billing.distribute() runs on the coordinator (this node is a worker)' USING ERRCODE = '55000';
    END IF;
    -- (A count: Citus cannot plan EXISTS over a distributed table as a PL/pgSQL expression.)
    n := (SELECT count(*) FROM billing.customers WHERE slots > 1);
    IF n > 0 THEN
        RAISE EXCEPTION 'billing.distribute(): % customers have slots (billing.set_slots); a slot account is a customer of its own, on another shard', n
            USING ERRCODE = '55000';
    END IF;
    -- The journal's append-only triggers run on its shards; the catalog tables' foreign
    -- keys between reference tables stay, without local copies on the coordinator.
    SET LOCAL citus.enable_unsafe_triggers = on;
    SET LOCAL citus.enable_local_reference_table_foreign_keys = off;

    FOREACH t IN ARRAY ARRAY['endpoints', 'endpoint_secrets', 'sync_marks', 'topup_credits', 'plans', 'meters',
                             'meter_prices', 'limits', 'outbox', 'outbox_waiters'] LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_dist_partition WHERE logicalrelid = ('billing.' || t)::regclass) THEN
            PERFORM create_reference_table(('billing.' || t)::regclass);
        END IF;
    END LOOP;

    IF NOT EXISTS (SELECT FROM pg_catalog.pg_dist_partition WHERE logicalrelid = 'billing.customers'::regclass) THEN
        PERFORM create_distributed_table('billing.customers', 'customer');
    END IF;
    FOREACH t IN ARRAY ARRAY['grants', 'reservations', 'journal', 'subscriptions', 'period_invoices',
                             'subscription_periods', 'disputes', 'usage_carry', 'usage_events', 'buckets',
                             'auto_topups'] LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_dist_partition WHERE logicalrelid = ('billing.' || t)::regclass) THEN
            PERFORM create_distributed_table(('billing.' || t)::regclass, 'customer', colocate_with => 'billing.customers');
        END IF;
    END LOOP;

    FOREACH t IN ARRAY ARRAY['events:event_id:', 'event_variants:event_id:billing.events', 'provider_objects:object_id:',
                             'provider_customers:provider_customer:', 'purchases:purchase_id:',
                             'refunds:purchase_id:billing.purchases'] LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_dist_partition
                        WHERE logicalrelid = ('billing.' || split_part(t, ':', 1))::regclass) THEN
            PERFORM create_distributed_table(('billing.' || split_part(t, ':', 1))::regclass, split_part(t, ':', 2),
                colocate_with => coalesce(nullif(split_part(t, ':', 3), ''), 'default'));
        END IF;
    END LOOP;

    -- Delegated by their first argument, the customer.
    FOREACH f IN ARRAY ARRAY[
        'billing.grant(text, bigint, text, text, timestamptz, int, jsonb)',
        'billing.debit(text, bigint, text, jsonb)',
        'billing.reserve(text, bigint, text, interval)',
        'billing.settle(text, uuid, bigint)',
        'billing.extend(text, uuid, interval)',
        'billing.release(text, uuid)',
        'billing.refund(text, uuid, bigint, text)',
        'billing.balance(text)',
        'billing.balance_at(text, timestamptz)',
        'billing.set_overdraft(text, bigint)',
        'billing.access(text, text)',
        'billing.can_access(text, text)',
        'billing.charge(text, text, bigint, text)',
        'billing.set_frozen(text, boolean)',
        'billing.record_usage(text, text, bigint, text, timestamptz, uuid)',
        'billing.usage(text, timestamptz, timestamptz)',
        'billing.set_low_balance(text, bigint)',
        'billing.set_auto_topup(text, bigint, bigint, int, int)'] LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_dist_object
                        WHERE classid = 'pg_catalog.pg_proc'::regclass AND objid = f::regprocedure
                          AND distribution_argument_index IS NOT NULL) THEN
            PERFORM create_distributed_function(f::regprocedure, '$1', colocate_with => 'billing.customers');
        END IF;
    END LOOP;
END $$;
COMMENT ON FUNCTION billing.distribute IS 'On a Citus coordinator: distributes the billing tables by customer (or provider id), makes the catalog reference tables and delegates the customer functions. Idempotent.';
