-- billing 0.3.0: privileges of access, metering and the outbox.
REVOKE ALL ON billing.meters, billing.meter_prices, billing.usage_carry, billing.usage_events,
    billing.limits, billing.buckets, billing.auto_topups, billing.outbox,
    billing.event_lag, billing.low_balances, billing.open_holds FROM PUBLIC;
REVOKE ALL ON FUNCTION billing._outbox_notify(), billing._subscription_outbox(),
    billing.access(text, text), billing.can_access(text, text), billing.charge(text, text, bigint, text),
    billing.define_meter(text, bigint, bigint, timestamptz),
    billing.record_usage(text, text, bigint, text, timestamptz, uuid), billing.usage(text, timestamptz, timestamptz),
    billing.define_limit(text, text, int, interval), billing.set_low_balance(text, bigint),
    billing.set_auto_topup(text, bigint, bigint, int, int), billing.report_topup(text, text, boolean),
    billing.claim_outbox(int, interval), billing.ack_outbox(bigint) FROM PUBLIC;

GRANT EXECUTE ON FUNCTION billing.access(text, text), billing.can_access(text, text),
    billing.charge(text, text, bigint, text), billing.record_usage(text, text, bigint, text, timestamptz, uuid),
    billing.usage(text, timestamptz, timestamptz), billing.claim_outbox(int, interval),
    billing.ack_outbox(bigint), billing.report_topup(text, text, boolean) TO billing_app;

GRANT SELECT ON billing.event_lag, billing.low_balances, billing.open_holds, billing.meters,
    billing.meter_prices, billing.limits TO billing_reader;
GRANT EXECUTE ON FUNCTION billing.usage(text, timestamptz, timestamptz) TO billing_reader;

GRANT EXECUTE ON FUNCTION billing.define_meter(text, bigint, bigint, timestamptz),
    billing.define_limit(text, text, int, interval), billing.set_low_balance(text, bigint),
    billing.set_auto_topup(text, bigint, bigint, int, int) TO billing_admin;
GRANT SELECT ON billing.usage_carry, billing.usage_events, billing.buckets, billing.auto_topups,
    billing.outbox TO billing_admin;
