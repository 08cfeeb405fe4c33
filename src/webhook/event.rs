//! Stripe events as data: parsing a verified body and reading the facts each event type
//! carries, across API versions (basil moved subscription periods under `items.data[]`
//! and invoice subscriptions under `parent.subscription_details`). Pure: no Postgres.
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: String,
    pub kind: String,
    pub created: i64,
    pub api_version: Option<String>,
    /// `data.object`, when the event carries a snapshot (thin and legacy events do not).
    pub object: Option<Value>,
}

/// Parses a Stripe event body: a JSON object with a string `id`, a string `type` and an
/// integer `created`. serde_json refuses nesting deeper than 128 levels.
pub fn parse(body: &str) -> Result<Event, String> {
    let mut v = super::sparse::from_str(body, READ).map_err(|e| format!("body is not JSON: {e}"))?;
    let o = v.as_object_mut().ok_or("body is not a JSON object")?;
    let text = |k: &str| o.get(k).and_then(Value::as_str).filter(|s| !s.is_empty() && s.len() <= 255).map(str::to_string);
    let id = text("id").ok_or("event has no \"id\"")?;
    let kind = text("type").ok_or("event has no \"type\"")?;
    let created = o.get("created").and_then(Value::as_i64).ok_or("event has no integer \"created\"")?;
    let api_version = o.get("api_version").and_then(Value::as_str).map(str::to_string);
    // Thin events (v2 "v2.core.event", v1 thin) carry only a reference, no snapshot.
    let thin = o.get("object").and_then(Value::as_str).is_some_and(|s| s != "event");
    // The snapshot is taken out of the parsed body, not copied: it is most of it.
    let object = match thin {
        true => None,
        false => o.get_mut("data").and_then(|d| d.get_mut("object")).filter(|x| x.is_object()).map(Value::take),
    };
    Ok(Event { id, kind, created, api_version, object })
}

/// Every member name a reader of an event looks at, at any depth; `parse` keeps only
/// these (`sparse`). A snapshot is mostly members no rule reads: of the bench's
/// deliveries, a checkout event keeps 21 of its 71 members, a subscription event 34 of
/// 80. A name missing here reads as absent: the test
/// `the_kept_members_are_all_the_readers_read` compares every reader on kept and whole
/// snapshots of every Stripe vector.
const READ: &[&str] = &[
    "amount",
    "amount_received",
    "amount_refunded",
    "amount_total",
    "api_version",
    "billing_reason",
    "cancel_at_period_end",
    "charge",
    "client_reference_id",
    "created",
    "credited_items",
    "credits",
    "currency",
    "current_period_end",
    "current_period_start",
    "customer",
    "data",
    "end",
    "id",
    "invoice_item_details",
    "items",
    "lines",
    "metadata",
    "mode",
    "object",
    "parent",
    "payment_intent",
    "payment_status",
    "period",
    "plan",
    "price",
    "price_details",
    "pricing",
    "proration",
    "proration_details",
    "quantity",
    "start",
    "status",
    "subscription",
    "subscription_details",
    "subscription_item_details",
    "trial_end",
    "type",
];

pub fn s<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut x = v;
    for p in path {
        x = x.get(p)?;
    }
    x.as_str().filter(|s| !s.is_empty())
}

pub fn i(v: &Value, path: &[&str]) -> Option<i64> {
    let mut x = v;
    for p in path {
        x = x.get(p)?;
    }
    x.as_i64()
}

fn b(v: &Value, key: &str) -> bool {
    v.get(key).and_then(Value::as_bool).unwrap_or(false)
}

/// An expandable field: either an id string or the expanded object with an `id`.
pub fn id_of(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Object(o) => o.get("id").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// `metadata.credits`: Stripe metadata values are strings. `Ok(None)` when absent.
pub fn metadata_credits(obj: &Value) -> Result<Option<i64>, String> {
    match obj.get("metadata").and_then(|m| m.get("credits")) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(t)) => {
            t.trim().parse::<i64>().ok().filter(|n| *n > 0).map(Some).ok_or(format!("metadata.credits {t:?} is not a positive integer"))
        }
        Some(Value::Number(n)) => n.as_i64().filter(|n| *n > 0).map(Some).ok_or(format!("metadata.credits {n} is not a positive integer")),
        Some(other) => Err(format!("metadata.credits {other} is not a positive integer")),
    }
}

/// How an object names the application's customer, in order of precedence.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CustomerRef {
    /// `metadata.customer`, else `client_reference_id`: the application's own id.
    pub app: Option<String>,
    /// `customer` (`cus_...`), to resolve through `billing.link_customer`.
    pub provider: Option<String>,
}

pub fn customer_ref(obj: &Value) -> CustomerRef {
    CustomerRef {
        app: s(obj, &["metadata", "customer"]).or_else(|| s(obj, &["client_reference_id"])).map(str::to_string),
        provider: id_of(obj, "customer"),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    pub id: String,
    pub status: String,
    /// `items.data[]`: `(price id, quantity)`.
    pub items: Vec<(String, i64)>,
    /// `items.data[].current_period_end` (current API), else the top-level field (older).
    pub period_end: Option<i64>,
    /// `current_period_start`, from the same place as `period_end`.
    pub period_start: Option<i64>,
    pub cancel_at_period_end: bool,
    pub trial_end: Option<i64>,
}

pub fn subscription(obj: &Value) -> Option<Subscription> {
    let items = obj.get("items").and_then(|i| i.get("data")).and_then(Value::as_array);
    let item_end = items.and_then(|it| it.iter().filter_map(|x| i(x, &["current_period_end"])).max());
    let item_start =
        items.and_then(|it| it.iter().filter(|x| i(x, &["current_period_end"]) == item_end).filter_map(|x| i(x, &["current_period_start"])).max());
    let items = items
        .map(|it| {
            it.iter()
                .filter_map(|x| {
                    let price = s(x, &["price", "id"]).or_else(|| s(x, &["plan", "id"]))?;
                    Some((price.to_string(), i(x, &["quantity"]).filter(|q| *q > 0).unwrap_or(1)))
                })
                .collect()
        })
        .unwrap_or_default();
    let (period_end, period_start) = match item_end {
        Some(end) => (Some(end), item_start),
        None => (i(obj, &["current_period_end"]), i(obj, &["current_period_start"])),
    };
    Some(Subscription {
        id: s(obj, &["id"])?.to_string(),
        status: s(obj, &["status"])?.to_string(),
        items,
        period_end,
        period_start,
        cancel_at_period_end: b(obj, "cancel_at_period_end"),
        trial_end: i(obj, &["trial_end"]),
    })
}

/// Statuses a subscription never leaves.
pub fn terminal(status: &str) -> bool {
    matches!(status, "canceled" | "incomplete_expired")
}

#[derive(Debug, Clone, PartialEq)]
pub struct Invoice {
    pub id: String,
    /// `parent.subscription_details.subscription` (basil and later), else `subscription`.
    pub subscription: Option<String>,
    /// `subscription_create`, `subscription_cycle`, `subscription_update`, ...
    pub billing_reason: Option<String>,
    /// Paid-through: the latest `lines.data[].period.end`.
    pub period_end: Option<i64>,
    pub lines: Vec<super::allowance::Line>,
}

pub fn invoice(obj: &Value) -> Option<Invoice> {
    let lines = super::allowance::lines(obj);
    Some(Invoice {
        id: s(obj, &["id"])?.to_string(),
        subscription: obj
            .get("parent")
            .and_then(|p| p.get("subscription_details"))
            .and_then(|d| id_of(d, "subscription"))
            .or_else(|| id_of(obj, "subscription")),
        billing_reason: s(obj, &["billing_reason"]).map(str::to_string),
        period_end: lines.iter().map(|l| l.end).max(),
        lines,
    })
}

/// A payment that may buy credits: a Checkout Session or a PaymentIntent.
#[derive(Debug, Clone, PartialEq)]
pub struct Payment {
    /// The purchase's key: the PaymentIntent id when there is one, so the session's and
    /// the intent's events about one payment land on one purchase.
    pub purchase: String,
    pub paid: bool,
    pub amount: Option<i64>,
    pub currency: Option<String>,
    pub mode: Option<String>,
}

pub fn checkout_session(obj: &Value) -> Option<Payment> {
    let id = s(obj, &["id"])?;
    Some(Payment {
        purchase: id_of(obj, "payment_intent").unwrap_or_else(|| id.to_string()),
        paid: matches!(s(obj, &["payment_status"]), Some("paid" | "no_payment_required")),
        amount: i(obj, &["amount_total"]),
        currency: s(obj, &["currency"]).map(str::to_string),
        mode: s(obj, &["mode"]).map(str::to_string),
    })
}

pub fn payment_intent(obj: &Value) -> Option<Payment> {
    Some(Payment {
        purchase: s(obj, &["id"])?.to_string(),
        paid: s(obj, &["status"]) == Some("succeeded"),
        amount: i(obj, &["amount_received"]).filter(|a| *a > 0).or_else(|| i(obj, &["amount"])),
        currency: s(obj, &["currency"]).map(str::to_string),
        mode: None,
    })
}

/// A charge's cumulative refund (`amount_refunded` only ever grows).
#[derive(Debug, Clone, PartialEq)]
pub struct ChargeRefund {
    pub payment_intent: Option<String>,
    pub amount: i64,
    pub amount_refunded: i64,
}

pub fn charge_refund(obj: &Value) -> Option<ChargeRefund> {
    Some(ChargeRefund { payment_intent: id_of(obj, "payment_intent"), amount: i(obj, &["amount"])?, amount_refunded: i(obj, &["amount_refunded"])? })
}

#[derive(Debug, Clone, PartialEq)]
pub struct Refund {
    pub id: String,
    pub payment_intent: Option<String>,
    pub amount: i64,
    /// Counts toward the refunded total (pending or succeeded); failed/canceled do not.
    pub counts: bool,
}

pub fn refund(obj: &Value) -> Option<Refund> {
    Some(Refund {
        id: s(obj, &["id"])?.to_string(),
        payment_intent: id_of(obj, "payment_intent"),
        amount: i(obj, &["amount"])?,
        counts: matches!(s(obj, &["status"]), Some("succeeded" | "pending" | "requires_action")),
    })
}

#[derive(Debug, Clone, PartialEq)]
pub struct Dispute {
    pub id: String,
    pub payment_intent: Option<String>,
    pub charge: Option<String>,
    pub status: String,
}

pub fn dispute(obj: &Value) -> Option<Dispute> {
    Some(Dispute {
        id: s(obj, &["id"])?.to_string(),
        payment_intent: id_of(obj, "payment_intent"),
        charge: id_of(obj, "charge"),
        status: s(obj, &["status"]).unwrap_or("needs_response").to_string(),
    })
}

/// Whether a dispute in this status still freezes the customer: until closed as won
/// (or closed as a mere inquiry, `warning_closed`). A lost dispute keeps the freeze
/// until an operator lifts it.
pub fn dispute_open(status: &str) -> bool {
    !matches!(status, "won" | "warning_closed")
}

/// Credits to revoke in total when `refunded` of `amount` was refunded on a purchase of
/// `credits`: proportional, rounded down (the customer keeps the fraction).
pub fn revoked_for(credits: i64, amount: i64, refunded: i64) -> i64 {
    if amount <= 0 || refunded <= 0 {
        return 0;
    }
    let r = refunded.min(amount) as i128;
    (credits as i128 * r / amount as i128) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(path: &str) -> String {
        std::fs::read_to_string(format!("{}/tests/vectors/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    /// pay-rails fixtures are `event.data` only; wrap them into an event.
    fn wrap(kind: &str, data: &str) -> String {
        format!(r#"{{"id":"evt_test","object":"event","type":"{kind}","created":1700000000,"data":{data}}}"#)
    }

    /// `parse` keeps only the members in `READ`: every reader gives on what it kept what
    /// it gives on the whole snapshot, for every Stripe payload of the vectors.
    #[test]
    fn the_kept_members_are_all_the_readers_read() {
        let mut seen = 0;
        for dir in ["stripe-events", "stripe-flows"] {
            for f in std::fs::read_dir(format!("{}/tests/vectors/{dir}", env!("CARGO_MANIFEST_DIR"))).unwrap() {
                let path = f.unwrap().path();
                if path.extension().is_none_or(|x| x != "json") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                let v: Value = serde_json::from_str(&text).unwrap();
                // Event bodies as they are, `event.data` (pay-rails fixtures) and bare objects wrapped.
                let body = match v.get("object") {
                    Some(Value::String(o)) if o == "event" => text,
                    Some(Value::Object(_)) => wrap("any", &text),
                    _ => wrap("any", &format!(r#"{{"object":{text}}}"#)),
                };
                let whole: Value = serde_json::from_str(&body).unwrap();
                let Some(all) = whole.get("data").and_then(|d| d.get("object")).filter(|o| o.is_object()) else { continue };
                let kept = parse(&body).unwrap().object.unwrap();
                let at = path.display();
                assert_eq!(customer_ref(&kept), customer_ref(all), "{at}");
                assert_eq!(subscription(&kept), subscription(all), "{at}");
                assert_eq!(invoice(&kept), invoice(all), "{at}");
                assert_eq!(checkout_session(&kept), checkout_session(all), "{at}");
                assert_eq!(payment_intent(&kept), payment_intent(all), "{at}");
                assert_eq!(charge_refund(&kept), charge_refund(all), "{at}");
                assert_eq!(refund(&kept), refund(all), "{at}");
                assert_eq!(dispute(&kept), dispute(all), "{at}");
                assert_eq!(metadata_credits(&kept), metadata_credits(all), "{at}");
                assert_eq!(s(&kept, &["id"]), s(all, &["id"]), "{at}");
                assert_eq!(id_of(&kept, "customer"), id_of(all, "customer"), "{at}");
                assert!(kept.as_object().unwrap().len() < all.as_object().unwrap().len(), "{at}: nothing left out");
                seen += 1;
            }
        }
        assert!(seen >= 30, "{seen} payloads");
        // Numbers come through exact, whatever their size (`arbitrary_precision`).
        let big = wrap("any", r#"{"object":{"id":"x","amount":123456789012345678901234567890,"credits":-1.5e3}}"#);
        let o = parse(&big).unwrap().object.unwrap();
        assert_eq!(o["amount"].to_string(), "123456789012345678901234567890");
        assert_eq!(o["credits"], serde_json::from_str::<Value>("-1.5e3").unwrap());
    }

    #[test]
    fn rejects_what_is_not_an_event() {
        assert!(parse("not json").is_err());
        assert!(parse("[]").is_err());
        assert!(parse(r#"{"type":"x","created":1}"#).is_err());
        assert!(parse(r#"{"id":"evt","created":1}"#).is_err());
        assert!(parse(r#"{"id":"evt","type":"x","created":"1"}"#).is_err());
        let deep = "[".repeat(5000) + &"]".repeat(5000);
        assert!(parse(&deep).is_err());
    }

    #[test]
    fn legacy_and_thin_events_have_no_snapshot() {
        let e = parse(&fixture("stripe-events/event_pre_2017-05-25.json")).unwrap();
        assert!(e.object.is_none());
        let thin =
            r#"{"id":"evt_1","object":"v2.core.event","type":"v1.billing.meter.error_report_triggered","created":1,"related_object":{"id":"x"}}"#;
        assert!(parse(thin).unwrap().object.is_none());
    }

    #[test]
    fn subscription_periods_in_both_shapes() {
        let created = parse(&wrap("customer.subscription.created", &fixture("stripe-events/subscription.created.json"))).unwrap();
        let s1 = subscription(created.object.as_ref().unwrap()).unwrap();
        assert!(s1.period_end.is_some(), "top-level current_period_end (older API)");
        let updated = parse(&wrap("customer.subscription.updated", &fixture("stripe-events/subscription.updated.json"))).unwrap();
        let s2 = subscription(updated.object.as_ref().unwrap()).unwrap();
        assert!(s2.period_end.is_some(), "items.data[].current_period_end (current API)");
        assert!(!s2.items.is_empty());
        assert!(s2.period_start.is_some());
    }

    #[test]
    fn invoice_and_checkout_facts() {
        let inv = parse(&wrap("invoice.payment_failed", &fixture("stripe-events/invoice.payment_failed.json"))).unwrap();
        let f = invoice(inv.object.as_ref().unwrap()).unwrap();
        assert!(f.subscription.is_some());
        assert!(f.period_end.is_some());
        let cs = parse(&wrap("checkout.session.completed", &fixture("stripe-events/checkout.session.completed.json"))).unwrap();
        let p = checkout_session(cs.object.as_ref().unwrap()).unwrap();
        assert!(!p.purchase.is_empty());
    }

    #[test]
    fn partial_refund_fixture_revokes_a_third() {
        let e = parse(&wrap("charge.refunded", &fixture("stripe-events/charge.refunded.json"))).unwrap();
        let c = charge_refund(e.object.as_ref().unwrap()).unwrap();
        assert_eq!((c.amount, c.amount_refunded), (1500, 500));
        assert_eq!(revoked_for(3000, c.amount, c.amount_refunded), 1000);
    }

    #[test]
    fn revocation_rounds_down_and_is_bounded() {
        assert_eq!(revoked_for(1000, 3, 1), 333);
        assert_eq!(revoked_for(1000, 3, 3), 1000);
        assert_eq!(revoked_for(1000, 3, 9), 1000);
        assert_eq!(revoked_for(i64::MAX, i64::MAX, i64::MAX - 1), i64::MAX - 1);
        assert_eq!(revoked_for(1000, 0, 5), 0);
    }

    #[test]
    fn metadata_credits_must_be_a_positive_integer() {
        let v = |m: &str| serde_json::from_str::<Value>(&format!(r#"{{"metadata":{m}}}"#)).unwrap();
        assert_eq!(metadata_credits(&v(r#"{"credits":"1000"}"#)), Ok(Some(1000)));
        assert_eq!(metadata_credits(&v(r#"{}"#)), Ok(None));
        assert!(metadata_credits(&v(r#"{"credits":"-5"}"#)).is_err());
        assert!(metadata_credits(&v(r#"{"credits":"1e3"}"#)).is_err());
    }

    #[test]
    fn customer_precedence() {
        let o: Value = serde_json::from_str(r#"{"customer":"cus_1","client_reference_id":"app-1","metadata":{"customer":"app-2"}}"#).unwrap();
        assert_eq!(customer_ref(&o), CustomerRef { app: Some("app-2".into()), provider: Some("cus_1".into()) });
    }
}
