-- billing: roles and privileges (SPEC section 5). Runs last.
-- Roles are cluster-wide, so they are created only if missing and never dropped by
-- DROP EXTENSION (other databases may use them).
DO $$
DECLARE r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['billing_admin', 'billing_app', 'billing_webhook', 'billing_reader'] LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- another database's CREATE EXTENSION created it just now
            END;
        END IF;
    END LOOP;
END $$;

-- Nothing for PUBLIC: not the schema, not a table, not a function.
REVOKE ALL ON SCHEMA billing FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA billing FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA billing FROM PUBLIC;

GRANT USAGE ON SCHEMA billing TO billing_admin, billing_app, billing_webhook, billing_reader;

-- The application: the ledger functions, nothing else (no table access: every write
-- goes through the functions, which run as the extension owner).
GRANT EXECUTE ON FUNCTION
    billing.grant(text, bigint, text, text, timestamptz, int, jsonb),
    billing.debit(text, bigint, text, jsonb),
    billing.reserve(text, bigint, text, interval),
    billing.settle(uuid, bigint),
    billing.extend(uuid, interval),
    billing.release(uuid),
    billing.refund(uuid, bigint, text),
    billing.balance(text),
    billing.balance_at(text, timestamptz)
TO billing_app;

-- Readers: the journal and the views, and the consistency check.
GRANT SELECT ON billing.journal, billing.grant_status TO billing_reader;
GRANT EXECUTE ON FUNCTION billing.verify(), billing.balance(text), billing.balance_at(text, timestamptz) TO billing_reader;

-- Administrators: everything the others can, plus policy and maintenance.
GRANT billing_app, billing_reader TO billing_admin;
GRANT EXECUTE ON FUNCTION
    billing.set_overdraft(text, bigint),
    billing.set_frozen(text, boolean),
    billing.maintenance(int)
TO billing_admin;
GRANT SELECT ON ALL TABLES IN SCHEMA billing TO billing_admin;
