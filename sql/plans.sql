-- billing: plans, the subscriptions the webhook events maintain, plan allowances per
-- subscription period, and the access checks (SPEC sections 2 and 3; src/access/,
-- src/webhook/apply.rs, src/webhook/allowance.rs). Rate limits are in sql/usage.sql; a
-- subscription's status change reaches the application through the outbox
-- (sql/outbox.sql).

CREATE TABLE billing.plans (
    plan           text COLLATE "C"   PRIMARY KEY CHECK (plan <> ''),
    features       text[] COLLATE "C" NOT NULL DEFAULT '{}',
    period_credits bigint             NOT NULL DEFAULT 0 CHECK (period_credits >= 0),
    grace          interval           NOT NULL DEFAULT '3 days',
    provider_price text COLLATE "C"   UNIQUE
);

CREATE TABLE billing.subscriptions (
    customer             text COLLATE "C" NOT NULL REFERENCES billing.customers,
    provider             text COLLATE "C" NOT NULL,
    subscription_id      text COLLATE "C" NOT NULL,
    status               text COLLATE "C" NOT NULL,
    plan                 text COLLATE "C",
    price_id             text COLLATE "C",
    current_period_end   timestamptz,
    cancel_at_period_end boolean          NOT NULL DEFAULT false,
    trial_end            timestamptz,
    paid_through         timestamptz,                -- latest period end of a paid invoice
    status_created       bigint           NOT NULL,  -- (created, event) of the status' source
    status_event         text COLLATE "C" NOT NULL,
    updated_at           timestamptz      NOT NULL,
    -- The plan in force follows the latest subscription event; an invoice names it only
    -- for a subscription no event has described yet, and then the latest invoice wins.
    plan_created           bigint,
    plan_event             text COLLATE "C",
    plan_from_subscription boolean          NOT NULL DEFAULT false,
    PRIMARY KEY (customer, subscription_id)
);
-- A webhook about a subscription finds its customer here. Not unique (a unique index must
-- lead with the customer on Citus): a subscription belongs to one provider customer,
-- linked to one customer (provider_customers), so its rows are one customer's anyway.
CREATE INDEX subscriptions_provider_id ON billing.subscriptions (provider, subscription_id);
-- A customer's current subscription, read by an index in access's order: access() and
-- can_access() take a customer's subscription that has not ended first, then the latest
-- paid-through (else period) end. With only the primary key the plan was an index scan
-- and a Sort under LIMIT 1, and setting up the sort (a tuplesort and its memory
-- contexts) for the one row was a large share of a check: a loop of can_access calls ran
-- 30-45% faster with this index (src/access/api.rs, INPUTS). The index keys are that
-- ORDER BY's expressions, so the scan reads the first entry and stops. It costs
-- subscription writes one index entry (status and period ends change about once a
-- billing period).
-- The subscription id last breaks ties, so every reader (access, the answer kept on the
-- customer's row, verify) chooses the same subscription.
CREATE INDEX subscriptions_current ON billing.subscriptions
    (customer, (status IN ('canceled', 'incomplete_expired')), (coalesce(paid_through, current_period_end)) DESC NULLS LAST,
     subscription_id);

-- Plan allowances per (subscription, period) (SPEC section 2, "Plan changes"). A period's
-- allowance is computed from what its paid invoices say (src/webhook/allowance.rs) and
-- granted as the difference from what the ledger already got, so it is the same for
-- every order of arrival and never passes the largest plan held in the period.

-- What each paid invoice says of each period its lines touch: one row for its base lines
-- and one per change it bills (a duplicate delivery finds its rows and changes nothing).
CREATE TABLE billing.period_invoices (
    customer        text COLLATE "C" NOT NULL,
    subscription_id text COLLATE "C" NOT NULL,
    period_end      timestamptz      NOT NULL,
    invoice_id      text COLLATE "C" NOT NULL,
    billing_reason  text COLLATE "C",
    period_start    timestamptz,               -- earliest start of its base lines
    base            bigint           NOT NULL, -- allowance of its base (non-proration) lines
    old_allowance   bigint           NOT NULL, -- of its proration credits (unused time on the old items)
    new_allowance   bigint           NOT NULL, -- of its proration charges (the rest of the period on the new items)
    change_at       timestamptz      NOT NULL, -- when its change took effect; -infinity for its base lines
    created         bigint           NOT NULL, -- the invoice event's created
    PRIMARY KEY (customer, subscription_id, period_end, invoice_id, change_at)
);
COMMENT ON TABLE billing.period_invoices IS 'What each paid invoice says of each subscription period: the facts a period''s allowance is computed from.';

CREATE TABLE billing.subscription_periods (
    customer        text COLLATE "C" NOT NULL,
    subscription_id text COLLATE "C" NOT NULL,
    period_end      timestamptz      NOT NULL,
    period_start    timestamptz,               -- the latest start reported (invoice lines, subscription)
    base            bigint           NOT NULL DEFAULT 0,  -- the plan billed for the period (largest base)
    ceiling         bigint           NOT NULL DEFAULT 0,  -- the largest allowance held in the period
    allowance       bigint           NOT NULL DEFAULT 0,  -- what the period is entitled to
    granted         bigint           NOT NULL DEFAULT 0,  -- what the ledger got (less when paid after the end)
    updated_at      timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (customer, subscription_id, period_end)
);
COMMENT ON TABLE billing.subscription_periods IS 'Per subscription period: the plan allowance it is entitled to and what was granted.';

SELECT pg_catalog.pg_extension_config_dump('billing.plans', '');
SELECT pg_catalog.pg_extension_config_dump('billing.subscriptions', '');
SELECT pg_catalog.pg_extension_config_dump('billing.period_invoices', '');
SELECT pg_catalog.pg_extension_config_dump('billing.subscription_periods', '');

-- The access answer kept on the customer's row (billing.customers.sub_counts_until,
-- sub_allowed_until, sub_plan; src/access/decide.rs, kept): {counts_until, allowed_until}
-- of one subscription, NULL status for none.
CREATE FUNCTION billing._sub_kept(status text, paid_through timestamptz, period_end timestamptz,
    cancel_at_period_end boolean, trial_end timestamptz, grace_us bigint)
RETURNS timestamptz[] IMMUTABLE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_sub_kept';
COMMENT ON FUNCTION billing._sub_kept IS 'The instants until which a subscription counts and allows access ({counts_until, allowed_until}).';

-- What each customer with a subscription should keep: its chosen subscription (access's
-- order, src/access/api.rs inputs_sql!) and the answer it gives. Per customer on Citus:
-- DISTINCT ON the distribution column, the plans a reference table.
CREATE VIEW billing._access_kept AS
SELECT s.customer, s.k[1] AS counts_until, s.k[2] AS allowed_until, s.plan
  FROM (SELECT DISTINCT ON (s.customer) s.customer, s.plan,
               billing._sub_kept(s.status, s.paid_through, s.current_period_end, s.cancel_at_period_end, s.trial_end,
                                 (extract(epoch FROM coalesce(p.grace, '3 days')) * 1000000)::int8) AS k
          FROM billing.subscriptions s LEFT JOIN billing.plans p ON p.plan = s.plan
         ORDER BY s.customer, s.status IN ('canceled', 'incomplete_expired'),
                  coalesce(s.paid_through, s.current_period_end) DESC NULLS LAST, s.subscription_id) s;
COMMENT ON VIEW billing._access_kept IS 'The access answer each customer with a subscription should keep on its row (billing.verify compares).';

CREATE FUNCTION billing.define_plan(plan text, features text[], period_credits bigint DEFAULT 0,
    grace interval DEFAULT '3 days', provider_price text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    was interval;
BEGIN
    IF plan IS NULL OR plan = '' THEN RAISE EXCEPTION 'plan name must not be empty' USING ERRCODE = '22023'; END IF;
    IF period_credits IS NULL OR period_credits < 0 THEN
        RAISE EXCEPTION 'period_credits of plan "%" must be zero or positive', plan USING ERRCODE = '22023';
    END IF;
    IF grace IS NULL OR grace < '0'::interval THEN RAISE EXCEPTION 'grace of plan "%" must not be negative', plan USING ERRCODE = '22023'; END IF;
    SELECT p.grace INTO was FROM billing.plans p WHERE p.plan = define_plan.plan FOR UPDATE;
    INSERT INTO billing.plans AS p (plan, features, period_credits, grace, provider_price)
    VALUES (plan, coalesce(features, '{}'), period_credits, grace, provider_price)
    ON CONFLICT ON CONSTRAINT plans_pkey DO UPDATE
       SET features = EXCLUDED.features, period_credits = EXCLUDED.period_credits,
           grace = EXCLUDED.grace, provider_price = EXCLUDED.provider_price;
    -- The grace is part of the answer kept on the subscribers' rows (an undefined plan's
    -- is 3 days); the features are read from the plan at each check.
    IF coalesce(was, '3 days') IS DISTINCT FROM define_plan.grace THEN
        UPDATE billing.customers c SET sub_counts_until = k.counts_until, sub_allowed_until = k.allowed_until
          FROM billing._access_kept k
         WHERE c.sub_plan = define_plan.plan AND k.customer = c.customer
           AND (c.sub_counts_until, c.sub_allowed_until) IS DISTINCT FROM (k.counts_until, k.allowed_until);
    END IF;
END $$;

CREATE FUNCTION billing.access(customer text, feature text DEFAULT NULL,
    OUT allowed boolean, OUT reason text, OUT plan text, OUT status text, OUT balance bigint, OUT period_end timestamptz)
RETURNS record
STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_access';
COMMENT ON FUNCTION billing.access IS 'Whether the customer may use the product (or a feature) now, and why: active, trialing, grace, past_due, canceled, frozen, no_plan, no_feature, no_credits.';

CREATE FUNCTION billing.can_access(customer text, feature text DEFAULT NULL)
RETURNS boolean STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_can_access';
COMMENT ON FUNCTION billing.can_access IS 'allowed of billing.access; cheap enough for row-level-security policies.';

CREATE FUNCTION billing.charge(customer text, feature text, amount bigint, idempotency_key text,
    OUT entry_id uuid, OUT balance_after bigint, OUT replayed boolean)
RETURNS record
VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_charge';
COMMENT ON FUNCTION billing.charge IS 'Access check, rate limit and debit in one call; denies with the reason''s SQLSTATE.';

-- An operator's freeze (as an open dispute's): the customer is refused debits (BL004)
-- and access; the change reaches the outbox (src/access/freeze.rs).
CREATE FUNCTION billing.set_frozen(customer text, frozen boolean DEFAULT true)
RETURNS void VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
LANGUAGE c AS 'MODULE_PATHNAME', 'billing_set_frozen';
COMMENT ON FUNCTION billing.set_frozen IS 'Freezes (or unfreezes) a customer: debits and holds are refused with BL004.';
