//! Applying a verified Stripe event to subscriptions, credits and freezes. Runs inside
//! a subtransaction of the ingesting transaction (see `ingest.rs`): an error here rolls
//! back only the event's effects, and the event is kept as `failed`.
//!
//! Order of truth: a subscription snapshot applies only if its (created, event id) is
//! past the last one applied to that subscription, and then only monotonic facts move
//! (a terminal status stays, the period end only moves forward). Money effects are keyed
//! by the business object (purchase, invoice, cumulative refund), not by the event.
use super::allowance;
use super::event::{self, CustomerRef, Event};
use crate::error::{BillingError, Result, UNKNOWN};
use crate::ledger::api::{grant_as, revoke};
use crate::pg::direct;
use crate::pg::spi::{run, Stmt};
use crate::pg::whole_row::{self, Fields};
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::BuiltinOid::*;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::JsonB;
use serde_json::{json, Value};

pub const PROVIDER: &str = "stripe";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied(String),
    Stale(String),
    Ignored(String),
}

impl Outcome {
    pub fn status(&self) -> &'static str {
        match self {
            Outcome::Applied(_) => "applied",
            Outcome::Stale(_) => "stale",
            Outcome::Ignored(_) => "ignored",
        }
    }
    pub fn detail(&self) -> &str {
        match self {
            Outcome::Applied(d) | Outcome::Stale(d) | Outcome::Ignored(d) => d,
        }
    }
}

/// The application's customer an event concerns, once it is known.
pub struct Applied {
    pub outcome: Outcome,
    pub customer: Option<String>,
}

fn waiting(what: String) -> BillingError {
    BillingError::new(UNKNOWN, what)
        .hint("Link the customer with billing.link_customer(customer, provider_customer_id); its waiting events are then applied in order.")
}

static LINKED: Stmt =
    Stmt { sql: "SELECT customer FROM billing.provider_customers WHERE provider = $1 AND provider_customer = $2", args: &[TEXTOID, TEXTOID] };
/// The link of the provider customer, after its customer's row (`store::CREATE`): two
/// statements, as the two rows live on different shards on Citus (the link is keyed by
/// the provider's id).
static ENSURE_LINKED: Stmt = Stmt {
    sql: "INSERT INTO billing.provider_customers (provider, provider_customer, customer) VALUES ($1, $2, $3)
          ON CONFLICT (provider, provider_customer) DO NOTHING",
    args: &[TEXTOID, TEXTOID, TEXTOID],
};

/// Finds the application's customer: `metadata.customer` / `client_reference_id` name it
/// (and link the provider customer on the way); else the linked provider customer.
fn resolve(c: &mut SpiClient<'_>, r: &CustomerRef) -> Result<Option<String>> {
    if let Some(app) = &r.app {
        if app.is_empty() || app.len() > crate::ledger::api::MAX_CUSTOMER {
            return Err(BillingError::invalid(format!("customer id {app:?} in the event is not a valid customer id")));
        }
        let owner = match &r.provider {
            Some(p) => linked(c, p)?,
            None => None,
        };
        match (&r.provider, owner) {
            // Linked already (the usual case): the customer exists, as the link's foreign
            // key says, and there is nothing to write.
            (Some(_), Some(owner)) if owner == *app => {}
            (Some(p), None) => {
                run(c, &crate::ledger::store::CREATE, &[app.as_str().into()])?;
                run(c, &ENSURE_LINKED, &[PROVIDER.into(), p.as_str().into(), app.as_str().into()])?;
            }
            // No provider customer, or one linked to another customer (which stays so).
            _ => {
                run(c, &crate::ledger::store::CREATE, &[app.as_str().into()])?;
            }
        }
        return Ok(Some(app.clone()));
    }
    match &r.provider {
        Some(p) => linked(c, p),
        None => Ok(None),
    }
}

/// The customer provider customer `p` is linked to, if any: by the link's index
/// (`direct`) where it can be read so, else by LINKED.
fn linked(c: &mut SpiClient<'_>, p: &str) -> Result<Option<String>> {
    static LINK: Fields = Fields(&["customer"]);
    if direct::usable() {
        if let Some(rows) = direct::fetch(&[(&direct::PROVIDER_CUSTOMER, &[direct::text(PROVIDER), direct::text(p)])]) {
            return match whole_row::read_datum(rows[0], &LINK)? {
                Some(r) => r.get::<String>(0),
                None => Ok(None),
            };
        }
    }
    let t = run(c, &LINKED, &[PROVIDER.into(), p.into()])?;
    if t.is_empty() {
        return Ok(None);
    }
    Ok(t.first().get::<String>(1)?)
}

fn require(c: &mut SpiClient<'_>, r: &CustomerRef, what: &str) -> Result<String> {
    resolve(c, r)?.ok_or_else(|| match &r.provider {
        Some(p) => waiting(format!("unknown customer for {what}: provider customer {p} is not linked")),
        None => waiting(format!("unknown customer for {what}: the object names no customer")),
    })
}

pub fn apply(e: &Event) -> Result<Applied> {
    let Some(obj) = e.object.as_ref() else {
        return Ok(Applied { outcome: Outcome::Ignored("no data.object snapshot (thin or legacy event)".into()), customer: None });
    };
    Spi::connect_mut(|c| match e.kind.as_str() {
        "checkout.session.completed" | "checkout.session.async_payment_succeeded" => checkout(c, e, obj),
        "payment_intent.succeeded" => payment_intent(c, e, obj),
        "invoice.paid" | "invoice.payment_succeeded" => invoice(c, e, obj, true),
        "invoice.payment_failed" => invoice(c, e, obj, false),
        "customer.subscription.created"
        | "customer.subscription.updated"
        | "customer.subscription.deleted"
        | "customer.subscription.paused"
        | "customer.subscription.resumed" => subscription(c, e, obj),
        "charge.refunded" => charge_refunded(c, e, obj),
        "refund.created" | "refund.updated" | "charge.refund.updated" => refund(c, e, obj),
        "charge.dispute.created" | "charge.dispute.updated" | "charge.dispute.closed" => dispute(c, e, obj),
        _ => Ok(Applied { outcome: Outcome::Ignored(format!("no effect for {}", e.kind)), customer: None }),
    })
}

// ---- credit top-ups ----

static TOPUP: Stmt = Stmt { sql: "SELECT credits FROM billing.topup_credits WHERE match = lower($1)", args: &[TEXTOID] };
/// The purchase, with the id its grant is about to get (`grant_as`).
static PURCHASE_CLAIM: Stmt = Stmt {
    sql: "INSERT INTO billing.purchases (customer, provider, purchase_id, credits, amount, currency, grant_id, created_at)
          VALUES ($1, $2, $3, $4, $5, $6, $7, now())
          ON CONFLICT (provider, purchase_id) DO NOTHING RETURNING purchase_id",
    args: &[TEXTOID, TEXTOID, TEXTOID, INT8OID, INT8OID, TEXTOID, UUIDOID],
};
static PURCHASE_GRANT: Stmt =
    Stmt { sql: "UPDATE billing.purchases SET grant_id = $3 WHERE provider = $1 AND purchase_id = $2", args: &[TEXTOID, TEXTOID, UUIDOID] };

fn mapped_credits(c: &mut SpiClient<'_>, keys: &[String]) -> Result<Option<i64>> {
    for k in keys {
        let t = run(c, &TOPUP, &[k.as_str().into()])?;
        if !t.is_empty() {
            return Ok(t.first().get::<i64>(1)?);
        }
    }
    Ok(None)
}

/// Grants a purchase's credits once, however many events describe it.
fn top_up(c: &mut SpiClient<'_>, e: &Event, customer: &str, p: &event::Payment, credits: i64) -> Result<Outcome> {
    let id = crate::pg::spi::new_id();
    let claimed = run(
        c,
        &PURCHASE_CLAIM,
        &[
            customer.into(),
            PROVIDER.into(),
            p.purchase.as_str().into(),
            credits.into(),
            p.amount.map_or_else(DatumWithOid::null::<i64>, |a| a.into()),
            p.currency.as_deref().map_or_else(DatumWithOid::null::<&str>, |x| x.into()),
            crate::pg::spi::uuid(&id).into(),
        ],
    )?;
    if claimed.is_empty() {
        return Ok(Outcome::Applied(format!("purchase {} already granted", p.purchase)));
    }
    let key = format!("stripe:purchase:{}", p.purchase);
    let metadata = json!({ "provider": PROVIDER, "purchase": p.purchase, "event": e.id });
    let gid = grant_as(id, Some(customer), Some(credits), Some(&key), Some("purchase"), None, Some(0), Some(JsonB(metadata)))?;
    if gid != crate::pg::spi::uuid(&id) {
        // The key was used before (a grant made by hand under it): the purchase names that grant.
        run(c, &PURCHASE_GRANT, &[PROVIDER.into(), p.purchase.as_str().into(), gid.into()])?;
    }
    Ok(Outcome::Applied(format!("granted {credits} credits for purchase {}", p.purchase)))
}

fn checkout(c: &mut SpiClient<'_>, e: &Event, obj: &Value) -> Result<Applied> {
    let p = event::checkout_session(obj).ok_or_else(|| BillingError::invalid("checkout session without an id"))?;
    let customer = require(c, &event::customer_ref(obj), "checkout session")?;
    if !p.paid {
        return Ok(Applied { outcome: Outcome::Applied("not paid yet: waiting for async_payment_succeeded".into()), customer: Some(customer) });
    }
    let credits = match event::metadata_credits(obj).map_err(BillingError::invalid)? {
        Some(n) => Some(n),
        None if p.mode.as_deref() == Some("subscription") => None,
        None => {
            let by_amount = match (&p.currency, p.amount) {
                (Some(cur), Some(a)) => vec![format!("{cur}:{a}")],
                _ => vec![],
            };
            mapped_credits(c, &by_amount)?
        }
    };
    let outcome = match credits {
        Some(n) => top_up(c, e, &customer, &p, n)?,
        None if p.mode.as_deref() == Some("subscription") => Outcome::Applied("subscription checkout: the invoice grants the allowance".into()),
        None => {
            return Err(BillingError::invalid(format!(
                "no credits for purchase {}: no metadata.credits and no billing.define_topup match",
                p.purchase
            )))
        }
    };
    Ok(Applied { outcome, customer: Some(customer) })
}

/// A PaymentIntent buys credits only when it says so (`metadata.credits`): the intent
/// of a subscription invoice must not become a top-up.
fn payment_intent(c: &mut SpiClient<'_>, e: &Event, obj: &Value) -> Result<Applied> {
    let p = event::payment_intent(obj).ok_or_else(|| BillingError::invalid("payment intent without an id"))?;
    let Some(credits) = event::metadata_credits(obj).map_err(BillingError::invalid)? else {
        return Ok(Applied { outcome: Outcome::Ignored("payment intent without metadata.credits".into()), customer: None });
    };
    let customer = require(c, &event::customer_ref(obj), "payment intent")?;
    if !p.paid {
        return Ok(Applied { outcome: Outcome::Ignored(format!("payment intent {} not succeeded", p.purchase)), customer: Some(customer) });
    }
    let outcome = top_up(c, e, &customer, &p, credits)?;
    Ok(Applied { outcome, customer: Some(customer) })
}

// ---- subscriptions ----
//
// Every write of billing.subscriptions is here, each under the customer's lock
// (`lock_subscriber`), and every applied event is followed by the customer's access note
// (`webhook::ingest::after_apply`), which brings the access answer kept on the customer's
// row (`can_access` reads it alone) up to its subscriptions.

/// The plan of a price: `(plan, period_credits)`, where the price's index cannot be read
/// directly (`plan_of`). One price a statement: with an array (`= ANY($1)`) the generic
/// plan's estimate of ten elements cost more than a custom plan for one, so the plan
/// cache planned the statement again at every event.
static PLAN_OF: Stmt = Stmt { sql: "SELECT plan, period_credits FROM billing.plans WHERE provider_price = $1", args: &[TEXTOID] };
static SUB: Stmt =
    Stmt { sql: "SELECT customer, plan FROM billing.subscriptions WHERE provider = $1 AND subscription_id = $2", args: &[TEXTOID, TEXTOID] };
static ADVANCE: Stmt = Stmt {
    sql: "INSERT INTO billing.provider_objects AS o (provider, object_id, created, event_id) VALUES ($1, $2, $3, $4)
          ON CONFLICT (provider, object_id) DO UPDATE SET created = EXCLUDED.created, event_id = EXCLUDED.event_id
           WHERE (o.created, o.event_id) < (EXCLUDED.created, EXCLUDED.event_id)
          RETURNING 1",
    args: &[TEXTOID, TEXTOID, INT8OID, TEXTOID],
};
static SUB_UPSERT: Stmt = Stmt {
    sql: "INSERT INTO billing.subscriptions AS s (customer, provider, subscription_id, status, plan, price_id,
              current_period_end, cancel_at_period_end, trial_end, status_created, status_event, updated_at,
              plan_created, plan_event, plan_from_subscription)
          VALUES ($1, $2, $3, $4, $5, $6, to_timestamp($7), $8, to_timestamp($9), $10, $11, now(), $10, $11, $5 IS NOT NULL)
          ON CONFLICT (customer, subscription_id) DO UPDATE SET
              status = CASE WHEN s.status IN ('canceled', 'incomplete_expired')
                              OR (EXCLUDED.status_created, EXCLUDED.status_event) < (s.status_created, s.status_event)
                            THEN s.status ELSE EXCLUDED.status END,
              plan = coalesce(EXCLUDED.plan, s.plan),
              plan_created = CASE WHEN EXCLUDED.plan IS NULL THEN s.plan_created ELSE EXCLUDED.plan_created END,
              plan_event = CASE WHEN EXCLUDED.plan IS NULL THEN s.plan_event ELSE EXCLUDED.plan_event END,
              plan_from_subscription = s.plan_from_subscription OR EXCLUDED.plan IS NOT NULL,
              price_id = coalesce(EXCLUDED.price_id, s.price_id),
              current_period_end = greatest(s.current_period_end, EXCLUDED.current_period_end),
              cancel_at_period_end = EXCLUDED.cancel_at_period_end,
              trial_end = EXCLUDED.trial_end,
              status_created = greatest(s.status_created, EXCLUDED.status_created),
              status_event = CASE WHEN (EXCLUDED.status_created, EXCLUDED.status_event) > (s.status_created, s.status_event)
                                  THEN EXCLUDED.status_event ELSE s.status_event END,
              updated_at = EXCLUDED.updated_at
          RETURNING s.status, s.plan",
    args: &[TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, FLOAT8OID, BOOLOID, FLOAT8OID, INT8OID, TEXTOID],
};
/// An invoice's news for its subscription: the status by (created, event) order, the
/// paid-through date, and the plan it bills for while no subscription event has named one.
static SUB_STATUS: Stmt = Stmt {
    sql: "UPDATE billing.subscriptions s SET
              status = CASE WHEN s.status IN ('canceled', 'incomplete_expired') OR ($4, $5) < (s.status_created, s.status_event)
                            THEN s.status ELSE $3 END,
              status_created = greatest(s.status_created, $4),
              status_event = CASE WHEN ($4, $5) > (s.status_created, s.status_event) THEN $5 ELSE s.status_event END,
              paid_through = CASE WHEN $6::float8 IS NULL THEN s.paid_through
                                  ELSE greatest(s.paid_through, to_timestamp($6)) END,
              plan = CASE WHEN $7::text IS NULL OR s.plan_from_subscription
                               OR ($4, $5) <= (coalesce(s.plan_created, -1), coalesce(s.plan_event, ''))
                          THEN s.plan ELSE $7 END,
              plan_event = CASE WHEN $7::text IS NULL OR s.plan_from_subscription
                                     OR ($4, $5) <= (coalesce(s.plan_created, -1), coalesce(s.plan_event, ''))
                                THEN s.plan_event ELSE $5 END,
              plan_created = CASE WHEN $7::text IS NULL OR s.plan_from_subscription
                                       OR ($4, $5) <= (coalesce(s.plan_created, -1), coalesce(s.plan_event, ''))
                                  THEN s.plan_created ELSE $4 END,
              updated_at = now()
          WHERE s.customer = $1 AND s.subscription_id = $2
          RETURNING s.status, s.plan",
    args: &[TEXTOID, TEXTOID, TEXTOID, INT8OID, TEXTOID, FLOAT8OID, TEXTOID],
};
static SUB_PLACEHOLDER: Stmt = Stmt {
    sql: "INSERT INTO billing.subscriptions (customer, provider, subscription_id, status, status_created, status_event, updated_at)
          VALUES ($1, $2, $3, 'incomplete', 0, '', now()) ON CONFLICT DO NOTHING
          RETURNING status, plan",
    args: &[TEXTOID, TEXTOID, TEXTOID],
};
/// A subscription's status before a write of its row, the row locked as the write will
/// lock it: the outbox row names the status it changed from even when an invoice and a
/// subscription event of it are applied at once.
static SUB_STATUS_OF: Stmt = Stmt {
    sql: "SELECT status FROM billing.subscriptions WHERE customer = $1 AND subscription_id = $2 FOR NO KEY UPDATE",
    args: &[TEXTOID, TEXTOID],
};
static SUB_NOTE: Stmt = Stmt {
    sql: "INSERT INTO billing.outbox (customer, kind, payload)
          VALUES ($1, 'subscription_status',
                  jsonb_build_object('subscription', $2::text, 'plan', $3::text, 'from', $4::text, 'to', $5::text))",
    args: &[TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID],
};

/// The status of a subscription's row before it is written (`None`: no row yet).
fn status_before(c: &mut SpiClient<'_>, customer: &str, sub: &str) -> Result<Option<String>> {
    let t = run(c, &SUB_STATUS_OF, &[customer.into(), sub.into()])?;
    Ok(if t.is_empty() { None } else { t.first().get::<String>(1)? })
}

/// After a write of a subscription's row that returned its (status, plan): a
/// `subscription_status` outbox row when the row is new or its status changed.
fn note_status(c: &mut SpiClient<'_>, customer: &str, sub: &str, before: Option<String>, written: (Option<String>, Option<String>)) -> Result<()> {
    let (Some(status), plan) = written else { return Ok(()) };
    if before.as_deref() == Some(status.as_str()) {
        return Ok(());
    }
    let opt = |v: &Option<String>| v.as_deref().map_or_else(DatumWithOid::null::<&str>, |p| p.into());
    crate::access::outbox::write(c, &SUB_NOTE, &[customer.into(), sub.into(), opt(&plan), opt(&before), status.as_str().into()])?;
    Ok(())
}

/// The (status, plan) a write of a subscription's row returned, if it wrote one.
fn written(t: pgrx::spi::SpiTupleTable<'_>) -> Result<(Option<String>, Option<String>)> {
    if t.is_empty() {
        return Ok((None, None));
    }
    let r = t.first();
    Ok((r.get::<String>(1)?, r.get::<String>(2)?))
}

/// The plan of a price and its period credits: by the price's index (`direct`) where it
/// can be read so, else by PLAN_OF.
fn plan_of(c: &mut SpiClient<'_>, price: &str) -> Result<Option<(String, i64)>> {
    match plan_by_index(price)? {
        Some(found) => Ok(found),
        None => plan_by_statement(c, price),
    }
}

/// `plan_of` through the index; None when it cannot be read so.
pub(crate) fn plan_by_index(price: &str) -> Result<Option<Option<(String, i64)>>> {
    static PLAN: Fields = Fields(&["plan", "period_credits"]);
    if !direct::usable() {
        return Ok(None);
    }
    let Some(rows) = direct::fetch(&[(&direct::PLAN_PRICE, &[direct::text(price)])]) else { return Ok(None) };
    Ok(Some(match whole_row::read_datum(rows[0], &PLAN)? {
        Some(r) => Some((r.get::<String>(0)?.unwrap_or_default(), r.get::<i64>(1)?.unwrap_or(0))),
        None => None,
    }))
}

/// `plan_of` through its statement.
pub(crate) fn plan_by_statement(c: &mut SpiClient<'_>, price: &str) -> Result<Option<(String, i64)>> {
    Ok(match run(c, &PLAN_OF, &[price.into()])?.next() {
        Some(r) => Some((r.get::<String>(1)?.unwrap_or_default(), r.get::<i64>(2)?.unwrap_or(0))),
        None => None,
    })
}

/// The plans of an object's prices.
struct Plans(Vec<(String, String, i64)>);

impl Plans {
    fn of<'p>(c: &mut SpiClient<'_>, prices: impl IntoIterator<Item = &'p str>) -> Result<Plans> {
        let mut prices: Vec<String> = prices.into_iter().map(str::to_string).collect();
        prices.sort();
        prices.dedup();
        let mut out = vec![];
        for price in prices {
            if let Some((plan, credits)) = plan_of(c, &price)? {
                out.push((price, plan, credits));
            }
        }
        Ok(Plans(out))
    }
    fn get(&self, price: &str) -> Option<&(String, String, i64)> {
        self.0.iter().find(|p| p.0 == price)
    }
    fn credits(&self, price: &str) -> Option<i64> {
        self.get(price).map(|p| p.2)
    }
    /// The plan in force among `(price, quantity)` items (`allowance::plan_in_force`).
    fn in_force(&self, items: &[(String, i64)]) -> Option<String> {
        let known = items.iter().filter_map(|(price, q)| self.get(price).map(|p| (p.1.as_str(), p.2, *q)));
        allowance::plan_in_force(known).map(str::to_string)
    }
}

fn opt_f(t: Option<i64>) -> DatumWithOid<'static> {
    t.map_or_else(DatumWithOid::null::<f64>, |x| (x as f64).into())
}

fn subscription(c: &mut SpiClient<'_>, e: &Event, obj: &Value) -> Result<Applied> {
    let s = event::subscription(obj).ok_or_else(|| BillingError::invalid("subscription without id or status"))?;
    let customer = require(c, &event::customer_ref(obj), &format!("subscription {}", s.id))?;
    // First, as in `invoice`: the period's lock and its grant's come after the customer's.
    crate::access::api::lock_subscriber(c, &customer)?;
    let plans = Plans::of(c, s.items.iter().map(|i| i.0.as_str()))?;
    let plan = plans.in_force(&s.items);
    // The period the snapshot reports, stale or not: its start only ever moves one way,
    // and it may be what a waiting top-up needed.
    if let (Some(start), Some(end)) = (s.period_start, s.period_end) {
        settle_period(c, &customer, &s.id, end, Some(start), plan.as_deref())?;
    }
    let advanced = !run(c, &ADVANCE, &[PROVIDER.into(), s.id.as_str().into(), e.created.into(), e.id.as_str().into()])?.is_empty();
    if !advanced {
        return Ok(Applied { outcome: Outcome::Stale(format!("older than the last event applied to {}", s.id)), customer: Some(customer) });
    }
    let status = if e.kind == "customer.subscription.deleted" { "canceled".to_string() } else { s.status.clone() };
    let price = plan.as_ref().and_then(|p| plans.0.iter().find(|x| &x.1 == p)).map(|x| x.0.clone());
    let before = status_before(c, &customer, &s.id)?;
    let t = run(
        c,
        &SUB_UPSERT,
        &[
            customer.as_str().into(),
            PROVIDER.into(),
            s.id.as_str().into(),
            status.as_str().into(),
            plan.as_deref().map_or_else(DatumWithOid::null::<&str>, |p| p.into()),
            price.as_deref().or(s.items.first().map(|i| i.0.as_str())).map_or_else(DatumWithOid::null::<&str>, |p| p.into()),
            opt_f(s.period_end),
            s.cancel_at_period_end.into(),
            opt_f(s.trial_end),
            e.created.into(),
            e.id.as_str().into(),
        ],
    )?;
    note_status(c, &customer, &s.id, before, written(t)?)?;
    let plan_note = plan.map(|p| format!(" on plan {p}")).unwrap_or_default();
    Ok(Applied { outcome: Outcome::Applied(format!("subscription {} {status}{plan_note}", s.id)), customer: Some(customer) })
}

static PERIOD_LOCK: Stmt = Stmt {
    sql: "INSERT INTO billing.subscription_periods AS p (customer, subscription_id, period_end, period_start)
          VALUES ($1, $2, to_timestamp($3), to_timestamp($4))
          ON CONFLICT (customer, subscription_id, period_end) DO UPDATE
             SET period_start = greatest(p.period_start, EXCLUDED.period_start)
          RETURNING period_start, granted, base, ceiling, allowance",
    args: &[TEXTOID, TEXTOID, FLOAT8OID, FLOAT8OID],
};
static PERIOD_FACT: Stmt = Stmt {
    sql: "INSERT INTO billing.period_invoices (customer, subscription_id, period_end, invoice_id, billing_reason,
              period_start, base, old_allowance, new_allowance, change_at, created)
          VALUES ($1, $2, to_timestamp($3), $4, $5, to_timestamp($6), $7, $8, $9, coalesce(to_timestamp($10), '-infinity'), $11)
          ON CONFLICT DO NOTHING",
    args: &[TEXTOID, TEXTOID, FLOAT8OID, TEXTOID, TEXTOID, FLOAT8OID, INT8OID, INT8OID, INT8OID, FLOAT8OID, INT8OID],
};
static PERIOD_FACTS: Stmt = Stmt {
    sql: "SELECT extract(epoch FROM period_start)::int8, base, old_allowance, new_allowance,
                 CASE WHEN isfinite(change_at) THEN extract(epoch FROM change_at)::int8 END
            FROM billing.period_invoices WHERE customer = $1 AND subscription_id = $2 AND period_end = to_timestamp($3)",
    args: &[TEXTOID, TEXTOID, FLOAT8OID],
};
static PERIOD_SET: Stmt = Stmt {
    sql: "UPDATE billing.subscription_periods SET base = $4, ceiling = $5, allowance = $6, granted = $7, updated_at = now()
           WHERE customer = $1 AND subscription_id = $2 AND period_end = to_timestamp($3)",
    args: &[TEXTOID, TEXTOID, FLOAT8OID, INT8OID, INT8OID, INT8OID, INT8OID],
};

/// Brings a period's grants up to its entitlement from all its facts, under the period
/// row's lock (two invoices of one period applied at once take turns, and the second
/// reads the first's facts). Grants only while the period lasts; never takes back.
/// Returns the credits granted now.
fn settle_period(c: &mut SpiClient<'_>, customer: &str, sub: &str, end: i64, start: Option<i64>, plan: Option<&str>) -> Result<i64> {
    let r = run(c, &PERIOD_LOCK, &[customer.into(), sub.into(), (end as f64).into(), opt_f(start)])?;
    let row = r.first();
    // Unix seconds (a TimestampTz counts from 2000-01-01).
    let reported = row.get::<TimestampWithTimeZone>(1)?.map(|t| crate::pg::spi::micros(t).div_euclid(1_000_000) + 946_684_800);
    let granted = row.get::<i64>(2)?.unwrap_or(0);
    let stored = allowance::Entitlement {
        base: row.get::<i64>(3)?.unwrap_or(0),
        ceiling: row.get::<i64>(4)?.unwrap_or(0),
        allowance: row.get::<i64>(5)?.unwrap_or(0),
    };
    let mut facts = vec![];
    for f in run(c, &PERIOD_FACTS, &[customer.into(), sub.into(), (end as f64).into()])? {
        facts.push(allowance::Fact {
            period_end: end,
            start: f.get::<i64>(1)?,
            base: f.get::<i64>(2)?.unwrap_or(0),
            old: f.get::<i64>(3)?.unwrap_or(0),
            new: f.get::<i64>(4)?.unwrap_or(0),
            change_at: f.get::<i64>(5)?,
        });
    }
    let ent = allowance::entitlement(end, reported, &facts);
    let end_us = end.saturating_mul(1_000_000) - 946_684_800_000_000;
    let delta = if ent.allowance > granted && end_us > crate::clock::now() { ent.allowance - granted } else { 0 };
    if delta > 0 {
        let key = format!("stripe:allowance:{sub}:{end}:{}", ent.allowance);
        let source = format!("plan:{}", plan.unwrap_or("subscription"));
        let metadata = JsonB(json!({ "provider": PROVIDER, "subscription": sub, "period_end": end, "allowance": ent.allowance }));
        grant_as(
            crate::pg::spi::new_id(),
            Some(customer),
            Some(delta),
            Some(&key),
            Some(&source),
            Some(crate::pg::spi::ts(end_us)),
            Some(0),
            Some(metadata),
        )?;
    }
    // Most calls change nothing (a subscription event reporting a known period, a
    // duplicate's facts): then no second write of the row.
    if ent != stored || delta > 0 {
        run(
            c,
            &PERIOD_SET,
            &[customer.into(), sub.into(), (end as f64).into(), ent.base.into(), ent.ceiling.into(), ent.allowance.into(), (granted + delta).into()],
        )?;
    }
    Ok(delta)
}

/// `invoice.paid` / `invoice.payment_succeeded`: the subscription is active and paid
/// through the invoice's period; what the invoice says of each period it bills becomes
/// a fact of that period, whose allowance is then brought up to date (`allowance.rs`).
/// `invoice.payment_failed`: the subscription is past due, and nothing else.
fn invoice(c: &mut SpiClient<'_>, e: &Event, obj: &Value, paid: bool) -> Result<Applied> {
    let inv = event::invoice(obj).ok_or_else(|| BillingError::invalid("invoice without an id"))?;
    let Some(sub_id) = inv.subscription.clone() else {
        return Ok(Applied { outcome: Outcome::Ignored(format!("invoice {} belongs to no subscription", inv.id)), customer: None });
    };
    // The subscription's customer if the subscription is known, else the invoice's.
    let t = run(c, &SUB, &[PROVIDER.into(), sub_id.as_str().into()])?;
    let (customer, sub_plan) = if t.is_empty() {
        // Not known yet: a placeholder row the invoice's news lands on (subscription rows
        // are never deleted, so a known one needs none).
        let customer = require(c, &event::customer_ref(obj), &format!("invoice {}", inv.id))?;
        crate::access::api::lock_subscriber(c, &customer)?;
        let t = run(c, &SUB_PLACEHOLDER, &[customer.as_str().into(), PROVIDER.into(), sub_id.as_str().into()])?;
        note_status(c, &customer, &sub_id, None, written(t)?)?;
        (customer, None)
    } else {
        let r = t.first();
        let customer = r.get::<String>(1)?.unwrap_or_default();
        crate::access::api::lock_subscriber(c, &customer)?;
        (customer, r.get::<String>(2)?)
    };
    let plans = Plans::of(c, inv.lines.iter().filter_map(|l| l.price.as_deref()))?;
    let plan = plans.in_force(&allowance::invoiced_items(&inv.lines));
    let status = if paid { "active" } else { "past_due" };
    let paid_through = if paid { inv.period_end } else { None };
    let before = status_before(c, &customer, &sub_id)?;
    let t = run(
        c,
        &SUB_STATUS,
        &[
            customer.as_str().into(),
            sub_id.as_str().into(),
            status.into(),
            e.created.into(),
            e.id.as_str().into(),
            opt_f(paid_through),
            plan.as_deref().filter(|_| paid).map_or_else(DatumWithOid::null::<&str>, |p| p.into()),
        ],
    )?;
    note_status(c, &customer, &sub_id, before, written(t)?)?;
    if !paid {
        return Ok(Applied { outcome: Outcome::Applied(format!("subscription {sub_id} past_due (invoice {})", inv.id)), customer: Some(customer) });
    }
    // A change of other prices only (an add-on, support) counts no allowance. But a first
    // invoice or a renewal that bills no plan's price, for a subscription no plan is known
    // of, most likely bills a plan not defined yet: it waits, failed, for
    // billing.define_plan and a replay (an applied event of the customer replays it too).
    let priced: Vec<&str> = inv.lines.iter().filter_map(|l| l.price.as_deref()).collect();
    let change = inv.billing_reason.as_deref() == Some("subscription_update");
    if !priced.is_empty() && plans.0.is_empty() && !change && sub_plan.is_none() {
        return Err(waiting(format!(
            "invoice {} of subscription {sub_id}: none of its prices ({}) is a plan's (billing.define_plan(..., provider_price => ...), then billing.replay)",
            inv.id,
            priced.join(", ")
        )));
    }
    let facts = allowance::facts(&inv.lines, |p| plans.credits(p));
    let mut granted = 0i64;
    for f in &facts {
        run(
            c,
            &PERIOD_FACT,
            &[
                customer.as_str().into(),
                sub_id.as_str().into(),
                (f.period_end as f64).into(),
                inv.id.as_str().into(),
                inv.billing_reason.as_deref().map_or_else(DatumWithOid::null::<&str>, |r| r.into()),
                opt_f(f.start),
                f.base.into(),
                f.old.into(),
                f.new.into(),
                opt_f(f.change_at),
                e.created.into(),
            ],
        )?;
        granted += settle_period(c, &customer, &sub_id, f.period_end, f.start, plan.as_deref())?;
    }
    let detail = match (facts.is_empty(), granted) {
        (true, _) => format!("subscription {sub_id} paid (invoice {}: no plan allowance)", inv.id),
        (false, 0) => format!("subscription {sub_id} paid (invoice {}): no credits due (a downgrade, a duplicate, or the period has ended)", inv.id),
        (false, n) => format!("subscription {sub_id} paid (invoice {}): {n} credits of the period allowance granted", inv.id),
    };
    Ok(Applied { outcome: Outcome::Applied(detail), customer: Some(customer) })
}

// ---- refunds and disputes ----

static PURCHASE_LOCK: Stmt = Stmt {
    sql: "SELECT customer, credits, amount, grant_id, refunded_amount, revoked_credits FROM billing.purchases
           WHERE provider = $1 AND purchase_id = $2 FOR UPDATE",
    args: &[TEXTOID, TEXTOID],
};
static PURCHASE_REFUNDED: Stmt = Stmt {
    sql: "UPDATE billing.purchases SET refunded_amount = $3, revoked_credits = $4 WHERE provider = $1 AND purchase_id = $2",
    args: &[TEXTOID, TEXTOID, INT8OID, INT8OID],
};
static REFUND_UPSERT: Stmt = Stmt {
    sql: "INSERT INTO billing.refunds AS r (provider, refund_id, purchase_id, amount, counts) VALUES ($1, $2, $3, $4, $5)
          ON CONFLICT (provider, purchase_id, refund_id) DO UPDATE SET amount = EXCLUDED.amount, counts = EXCLUDED.counts",
    args: &[TEXTOID, TEXTOID, TEXTOID, INT8OID, BOOLOID],
};
static REFUND_SUM: Stmt = Stmt {
    sql: "SELECT coalesce(sum(amount) FILTER (WHERE counts), 0)::bigint FROM billing.refunds WHERE provider = $1 AND purchase_id = $2",
    args: &[TEXTOID, TEXTOID],
};

/// Brings a purchase's revoked credits up to its cumulative refund (which never goes
/// down): each level of refund revokes once, however often it is delivered.
fn revoke_to(c: &mut SpiClient<'_>, purchase: &str, refunded: i64, charge_amount: Option<i64>) -> Result<Applied> {
    let t = run(c, &PURCHASE_LOCK, &[PROVIDER.into(), purchase.into()])?;
    if t.is_empty() {
        return Ok(Applied { outcome: Outcome::Ignored(format!("payment {purchase} bought no credits")), customer: None });
    }
    let r = t.first();
    let customer = r.get::<String>(1)?.unwrap_or_default();
    let credits = r.get::<i64>(2)?.unwrap_or(0);
    let amount = r.get::<i64>(3)?.or(charge_amount).unwrap_or(0);
    let grant_id = r.get::<pgrx::Uuid>(4)?.unwrap_or_else(crate::pg::spi::nil);
    let (was_refunded, was_revoked) = (r.get::<i64>(5)?.unwrap_or(0), r.get::<i64>(6)?.unwrap_or(0));
    let refunded = refunded.max(was_refunded);
    let target = event::revoked_for(credits, amount, refunded).max(was_revoked);
    let delta = target - was_revoked;
    if delta > 0 {
        let key = format!("stripe:revoke:{purchase}:{target}");
        revoke(&customer, &grant_id, delta, &key, json!({ "provider": PROVIDER, "purchase": purchase, "refunded": refunded }))?;
    }
    run(c, &PURCHASE_REFUNDED, &[PROVIDER.into(), purchase.into(), refunded.into(), target.into()])?;
    let detail = if delta > 0 {
        format!("revoked {delta} credits of purchase {purchase} ({refunded} of {amount} refunded)")
    } else {
        format!("purchase {purchase}: nothing more to revoke ({refunded} of {amount} refunded)")
    };
    Ok(Applied { outcome: Outcome::Applied(detail), customer: Some(customer) })
}

fn charge_refunded(c: &mut SpiClient<'_>, _e: &Event, obj: &Value) -> Result<Applied> {
    let ch = event::charge_refund(obj).ok_or_else(|| BillingError::invalid("charge without amount or amount_refunded"))?;
    let purchase = ch.payment_intent.clone().or_else(|| event::s(obj, &["id"]).map(str::to_string)).unwrap_or_default();
    revoke_to(c, &purchase, ch.amount_refunded, Some(ch.amount))
}

fn refund(c: &mut SpiClient<'_>, _e: &Event, obj: &Value) -> Result<Applied> {
    let r = event::refund(obj).ok_or_else(|| BillingError::invalid("refund without id or amount"))?;
    let Some(purchase) = r.payment_intent.clone() else {
        return Ok(Applied { outcome: Outcome::Ignored(format!("refund {} names no payment intent", r.id)), customer: None });
    };
    run(c, &REFUND_UPSERT, &[PROVIDER.into(), r.id.as_str().into(), purchase.as_str().into(), r.amount.into(), r.counts.into()])?;
    let total = run(c, &REFUND_SUM, &[PROVIDER.into(), purchase.as_str().into()])?.first().get::<i64>(1)?.unwrap_or(0);
    revoke_to(c, &purchase, total, None)
}

static PURCHASE_CUSTOMER: Stmt =
    Stmt { sql: "SELECT customer FROM billing.purchases WHERE provider = $1 AND purchase_id = $2", args: &[TEXTOID, TEXTOID] };
static DISPUTE_UPSERT: Stmt = Stmt {
    sql:
        "INSERT INTO billing.disputes AS d (provider, dispute_id, customer, status, open, updated_at) VALUES ($1, $2, $3, $4, $5, now())
          ON CONFLICT (customer, provider, dispute_id) DO UPDATE SET status = EXCLUDED.status, open = EXCLUDED.open, updated_at = EXCLUDED.updated_at",
    args: &[TEXTOID, TEXTOID, TEXTOID, TEXTOID, BOOLOID],
};
static FREEZE: Stmt = Stmt {
    sql: "UPDATE billing.customers c SET frozen = EXISTS (SELECT FROM billing.disputes d WHERE d.customer = $1 AND d.open)
           WHERE c.customer = ANY($2) RETURNING frozen",
    args: &[TEXTOID, TEXTARRAYOID],
};

/// An open dispute freezes the customer (debits refused with BL004) until it closes as won.
fn dispute(c: &mut SpiClient<'_>, e: &Event, obj: &Value) -> Result<Applied> {
    let d = event::dispute(obj).ok_or_else(|| BillingError::invalid("dispute without an id"))?;
    let mut customer = resolve(c, &event::customer_ref(obj))?;
    if customer.is_none() {
        if let Some(pi) = &d.payment_intent {
            let t = run(c, &PURCHASE_CUSTOMER, &[PROVIDER.into(), pi.as_str().into()])?;
            if !t.is_empty() {
                customer = t.first().get::<String>(1)?;
            }
        }
    }
    let customer = customer.ok_or_else(|| {
        waiting(format!(
            "unknown customer for dispute {}: payment {} is not a known purchase",
            d.id,
            d.payment_intent.as_deref().or(d.charge.as_deref()).unwrap_or("?")
        ))
    })?;
    let advanced = !run(c, &ADVANCE, &[PROVIDER.into(), d.id.as_str().into(), e.created.into(), e.id.as_str().into()])?.is_empty();
    if !advanced {
        return Ok(Applied { outcome: Outcome::Stale(format!("older than the last event applied to {}", d.id)), customer: Some(customer) });
    }
    let open = event::dispute_open(&d.status);
    run(c, &DISPUTE_UPSERT, &[PROVIDER.into(), d.id.as_str().into(), customer.as_str().into(), d.status.as_str().into(), open.into()])?;
    // Under the customer's lock, as every change a debit decides on: a freeze and a debit
    // of the same customer happen one after the other (all its slots', if slotted).
    // (A customer not in the ledger yet has no row to freeze: then there is one account.)
    let n = crate::ledger::store::Op::lock(c, &customer, crate::clock::now(), false)?.map_or(1, |op| op.slots);
    let accounts = crate::ledger::slots::lock_slots(&customer, n);
    let frozen = run(c, &FREEZE, &[customer.as_str().into(), accounts.into()])?.first().get::<bool>(1)?.unwrap_or(false);
    Ok(Applied {
        outcome: Outcome::Applied(format!("dispute {} {}: customer {}", d.id, d.status, if frozen { "frozen" } else { "not frozen" })),
        customer: Some(customer),
    })
}
