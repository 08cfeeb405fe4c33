-- billing 0.6.0: a customer's current subscription, read by an index in access's order.
--
-- access() and can_access() take a customer's subscription that has not ended first,
-- then the latest paid-through (else period) end. With only the primary key the plan
-- was an index scan and a Sort under LIMIT 1, and setting up the sort (a tuplesort and
-- its memory contexts) for the one row was a large share of a check: a loop of
-- can_access calls ran 30-45% faster with this index (src/access/api.rs, INPUTS). The
-- index keys are that ORDER BY's expressions, so the scan reads the first entry and stops.
-- It costs subscription writes one index entry (status and period ends change about
-- once a billing period).
CREATE INDEX subscriptions_current ON billing.subscriptions
    (customer, (status IN ('canceled', 'incomplete_expired')), (coalesce(paid_through, current_period_end)) DESC NULLS LAST);
