-- billing: roles and privileges (SPEC section 5). Runs last: every object exists.
--
-- Roles are cluster-wide, so they are created only if missing and never dropped by
-- DROP EXTENSION (other databases may use them).
--   billing_app      the application: the ledger, access and usage functions, the outbox
--   billing_webhook  a webhook receiver: hands in deliveries, nothing else
--   billing_sync     the reconciliation tool (scripts/stripe-sync.py): stores events it
--                    fetched from the provider's API, unsigned, so no other role may
--   billing_reader   reporting: the journal, the views, verify()
--   billing_admin    all of the above, plus policy, configuration and maintenance
-- No role gets table access to write: every write goes through the functions, which run
-- as the extension owner (SECURITY DEFINER).
DO $$
DECLARE r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['billing_admin', 'billing_app', 'billing_webhook', 'billing_reader', 'billing_sync'] LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- another database's CREATE EXTENSION created it just now
            END;
        END IF;
    END LOOP;
END $$;

-- Nothing for PUBLIC: not the schema, not a table or view, not a function.
REVOKE ALL ON SCHEMA billing FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA billing FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA billing FROM PUBLIC;

GRANT USAGE ON SCHEMA billing TO billing_admin, billing_app, billing_webhook, billing_reader, billing_sync;

-- The application: the functions, no table.
GRANT EXECUTE ON FUNCTION
    billing.grant(text, bigint, text, text, timestamptz, int, jsonb),
    billing.debit(text, bigint, text, jsonb),
    billing.debit_many(text[], bigint[], text[]),
    billing.reserve(text, bigint, text, interval),
    billing.settle(uuid, bigint),
    billing.extend(uuid, interval),
    billing.release(uuid),
    billing.refund(uuid, bigint, text),
    billing.settle(text, uuid, bigint),
    billing.extend(text, uuid, interval),
    billing.release(text, uuid),
    billing.refund(text, uuid, bigint, text),
    billing.balance(text),
    billing.balance_at(text, timestamptz),
    billing.link_customer(text, text, text),
    billing.verify_signature(text, text[], jsonb, text, timestamptz),
    billing.access(text, text),
    billing.can_access(text, text),
    billing.charge(text, text, bigint, text),
    billing.record_usage(text, text, bigint, text, timestamptz, uuid),
    billing.record_usage_many(text[], text[], bigint[], text[], timestamptz[]),
    billing.usage(text, timestamptz, timestamptz),
    billing.claim_outbox(int, interval, interval, text),
    billing.ack_outbox(bigint),
    billing.report_topup(text, text, boolean)
TO billing_app;

-- A webhook receiver holds no secret and no right beyond handing in deliveries.
GRANT INSERT ON billing.inbox TO billing_webhook;
GRANT EXECUTE ON FUNCTION billing.ingest(text, jsonb, text) TO billing_webhook;

-- The reconciliation tool: fetched events in, and where each endpoint stands.
GRANT EXECUTE ON FUNCTION billing.ingest_fetched(text, text) TO billing_sync;
GRANT SELECT ON billing.sync_status TO billing_sync;

-- Readers: the journal, the plans and subscriptions, the views, and the consistency check.
GRANT SELECT ON billing.journal, billing.grant_status, billing.open_holds, billing.low_balances,
    billing.plans, billing.subscriptions, billing.period_invoices, billing.subscription_periods,
    billing.meters, billing.meter_prices, billing.limits,
    billing.failed_events, billing.stale_events, billing.event_lag, billing.sync_status
TO billing_reader;
GRANT EXECUTE ON FUNCTION billing.verify(), billing.balance(text), billing.balance_at(text, timestamptz),
    billing.entry(uuid), billing.usage(text, timestamptz, timestamptz)
TO billing_reader;

-- Administrators: everything the application and readers can, plus policy,
-- configuration and maintenance, and reading every table but the secrets (readable by
-- the extension owner alone) and the inbox (never kept).
GRANT billing_app, billing_reader TO billing_admin;
GRANT EXECUTE ON FUNCTION
    billing.set_overdraft(text, bigint),
    billing.set_frozen(text, boolean),
    billing.set_slots(text, int),
    billing.maintenance(int),
    billing.add_endpoint(text, text),
    billing.add_secret(text, text),
    billing.remove_secret(text, text),
    billing.replay(text, text),
    billing.replay(text),
    billing.replay_failed(),
    billing.define_topup(text, bigint),
    billing.define_plan(text, text[], bigint, interval, text),
    billing.define_meter(text, bigint, bigint, timestamptz),
    billing.define_limit(text, text, int, interval),
    billing.set_low_balance(text, bigint),
    billing.set_auto_topup(text, bigint, bigint, int, int)
TO billing_admin;
GRANT SELECT ON billing.customers, billing.grants, billing.reservations, billing.journal, billing.grant_status,
    billing.endpoints, billing.events, billing.event_variants, billing.provider_customers,
    billing.provider_objects, billing.purchases, billing.refunds, billing.disputes, billing.topup_credits,
    billing.usage_carry, billing.usage_events, billing.buckets, billing.auto_topups, billing.outbox, billing.outbox_waiters,
    billing.sync_marks
TO billing_admin;
