-- billing 0.2.0: privileges of the webhook objects (runs after privileges.sql).
REVOKE ALL ON billing.endpoints, billing.endpoint_secrets, billing.events, billing.event_variants,
    billing.inbox, billing.provider_customers, billing.provider_objects, billing.plans,
    billing.subscriptions, billing.purchases, billing.refunds, billing.disputes,
    billing.topup_credits, billing.failed_events, billing.stale_events FROM PUBLIC;
REVOKE ALL ON FUNCTION billing.verify_signature(text, text[], jsonb, text, timestamptz),
    billing.ingest(text, jsonb, text), billing._inbox_ingest(), billing.replay(text, text),
    billing.replay(text), billing.replay_failed(), billing.add_endpoint(text, text),
    billing.add_secret(text, text), billing.remove_secret(text, text),
    billing.link_customer(text, text, text), billing.define_plan(text, text[], bigint, interval, text),
    billing.define_topup(text, bigint) FROM PUBLIC;

-- A webhook receiver holds no secret and no right beyond handing in deliveries.
GRANT INSERT ON billing.inbox TO billing_webhook;
GRANT EXECUTE ON FUNCTION billing.ingest(text, jsonb, text) TO billing_webhook;

GRANT EXECUTE ON FUNCTION billing.link_customer(text, text, text),
    billing.verify_signature(text, text[], jsonb, text, timestamptz) TO billing_app;

GRANT SELECT ON billing.failed_events, billing.stale_events, billing.subscriptions, billing.plans TO billing_reader;

GRANT EXECUTE ON FUNCTION billing.replay(text, text), billing.replay(text), billing.replay_failed(),
    billing.add_endpoint(text, text), billing.add_secret(text, text), billing.remove_secret(text, text),
    billing.define_plan(text, text[], bigint, interval, text), billing.define_topup(text, bigint) TO billing_admin;
GRANT SELECT ON billing.endpoints, billing.events, billing.event_variants, billing.provider_customers,
    billing.provider_objects, billing.purchases, billing.refunds, billing.disputes, billing.topup_credits TO billing_admin;
-- billing.endpoint_secrets: readable by the extension owner alone.
