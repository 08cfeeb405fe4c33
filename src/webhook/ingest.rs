//! The SQL functions of webhook ingestion: verify, store once, apply in the same
//! transaction (the apply in a subtransaction, so a failure keeps the raw event).
use super::apply;
use super::event;
use super::signature::{self, Provider, SigError};
use crate::error::{deliver, BillingError, Result, BAD_EVENT, BAD_SIGNATURE, BAD_TIMESTAMP, TOO_LARGE, UNKNOWN_ENDPOINT};
use crate::ledger::api::{customer_arg, need};
use crate::pg::direct;
use crate::pg::spi::{micros, run, subxact, Stmt};
use crate::pg::whole_row::{self, Fields};
use pgrx::datum::DatumWithOid;
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys::BuiltinOid::*;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::AnyElement;
use serde_json::Value;
use std::collections::HashMap;

pub static TOLERANCE: GucSetting<i32> = GucSetting::<i32>::new(300);
pub static MAX_BYTES: GucSetting<i32> = GucSetting::<i32>::new(1 << 20);

pub fn register() {
    GucRegistry::define_int_guc(
        c"billing.webhook_tolerance",
        c"How far (seconds) a webhook's signed timestamp may be from now, in either direction.",
        c"",
        &TOLERANCE,
        0,
        86_400,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"billing.webhook_max_bytes",
        c"The largest webhook body accepted; larger ones are refused before any hashing.",
        c"",
        &MAX_BYTES,
        1024,
        64 << 20,
        GucContext::Suset,
        GucFlags::UNIT_BYTE,
    );
}

type EventRow = (String, String, Option<String>);

fn unix_secs(ts_micros: i64) -> i64 {
    ts_micros.div_euclid(1_000_000) + 946_684_800
}

/// A delivery's headers: a jsonb argument, read in place (`jsonb::string_members`: names
/// matched case-insensitively, only string values count) and stored as it came.
struct Headers {
    datum: pg_sys::Datum,
    map: HashMap<String, String>,
}

impl Headers {
    /// `a` is the function's `headers jsonb` argument, taken as an `AnyElement` so pgrx
    /// does not print and parse it (nor `jsonb_param` print and parse it again to store it).
    fn of(a: Option<AnyElement>) -> Result<Self> {
        let a = need(a, "headers")?;
        debug_assert_eq!(a.oid(), JSONBOID.value(), "headers are declared jsonb");
        Ok(Headers { datum: a.datum(), map: unsafe { crate::pg::jsonb::string_members(a.datum()) } })
    }
    fn param(&self) -> DatumWithOid<'_> {
        unsafe { DatumWithOid::new(self.datum, JSONBOID.value()) }
    }
}

fn sig_error(e: SigError, endpoint: &str) -> BillingError {
    let code = match e {
        SigError::TooOld { .. } | SigError::TooNew { .. } => BAD_TIMESTAMP,
        SigError::TooLarge { .. } => TOO_LARGE,
        _ => BAD_SIGNATURE,
    };
    BillingError::new(code, format!("webhook for endpoint \"{endpoint}\" refused: {e}"))
}

#[pg_extern(sql = false)]
fn verify_signature(
    provider: Option<&str>,
    secrets: Option<Vec<Option<String>>>,
    headers: Option<AnyElement>,
    body: Option<&str>,
    at: Option<TimestampWithTimeZone>,
) -> Option<bool> {
    deliver(verify_signature_impl(provider, secrets, headers, body, at).map(Some), || None)
}
crate::sql_entry!(pg_finfo_billing_verify_signature, billing_verify_signature, verify_signature_wrapper, jsonb = [2]);

fn verify_signature_impl(
    provider: Option<&str>,
    secrets: Option<Vec<Option<String>>>,
    headers: Option<AnyElement>,
    body: Option<&str>,
    at: Option<TimestampWithTimeZone>,
) -> Result<bool> {
    let p = need(provider, "provider")?;
    let provider = Provider::parse(p).ok_or_else(|| BillingError::invalid(format!("unknown webhook provider {p:?} (stripe or standard)")))?;
    let secrets: Vec<String> = need(secrets, "secrets")?.into_iter().flatten().collect();
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    let h = Headers::of(headers)?.map;
    let body = need(body, "body")?;
    let now = unix_secs(at.map(micros).unwrap_or_else(crate::clock::now));
    let lookup = |name: &str| h.get(name).cloned();
    Ok(signature::verify(provider, &secrets, &lookup, body.as_bytes(), now, TOLERANCE.get() as i64, MAX_BYTES.get() as usize).is_ok())
}

/// An endpoint's provider and secrets, one row per secret (a NULL secret when it has
/// none). Collected in Rust: an aggregate here meant a Sort and an Agg to set up per call.
static ENDPOINT: Stmt = Stmt {
    sql: "SELECT e.provider, s.secret
            FROM billing.endpoints e LEFT JOIN billing.endpoint_secrets s ON s.endpoint = e.name
           WHERE e.name = $1",
    args: &[TEXTOID],
};
static ENDPOINT_ROW: Fields = Fields(&["provider"]);
static SECRET_ROW: Fields = Fields(&["secret"]);

/// An endpoint's provider (None: no such endpoint) and secrets: by their indexes
/// (`direct`) where they can be read so, else by ENDPOINT.
fn endpoint_of(c: &mut SpiClient<'_>, endpoint: &str) -> Result<(Option<String>, Vec<String>)> {
    endpoint_by(c, endpoint, true)
}

/// `endpoint_of`, by the indexes only if `by_index`.
pub(crate) fn endpoint_by(c: &mut SpiClient<'_>, endpoint: &str, by_index: bool) -> Result<(Option<String>, Vec<String>)> {
    if by_index && direct::usable() {
        let name = [direct::text(endpoint)];
        if let (Some(e), Some(s)) = (direct::fetch(&[(&direct::ENDPOINT, &name)]), direct::fetch_all(&direct::SECRETS, &name)) {
            let Some(e) = whole_row::read_datum(e[0], &ENDPOINT_ROW)? else { return Ok((None, vec![])) };
            let mut secrets = Vec::with_capacity(s.len());
            for r in s {
                secrets.extend(whole_row::read_value(r, &SECRET_ROW)?.get::<String>(0)?);
            }
            return Ok((e.get::<String>(0)?, secrets));
        }
    }
    let (mut provider, mut secrets) = (None, Vec::new());
    for r in run(c, &ENDPOINT, &[endpoint.into()])? {
        provider = r.get::<String>(1)?;
        secrets.extend(r.get::<String>(2)?);
    }
    Ok((provider, secrets))
}

/// A new event, written once with the outcome of its apply (the row is never rewritten
/// on the way: a 3 KB body updated in place would be logged twice, and a placeholder
/// status would leave an entry in the `events_failed` index for every event).
static INSERT_EVENT: Stmt = Stmt {
    sql: "INSERT INTO billing.events (provider, event_id, endpoint, type, created, api_version, object_id,
              provider_customer, body, headers, received_at, status, detail, customer, last_delivery_at, applied_at, via)
          VALUES ($1, $2, $3, $4, to_timestamp($5), $6, $7, $8, $9, $10, now(), $11, $12, $13, now(),
                  CASE WHEN $11 = 'failed' THEN NULL ELSE $15 END, $14)
          ON CONFLICT (provider, event_id) DO NOTHING RETURNING 1",
    args: &[
        TEXTOID, TEXTOID, TEXTOID, TEXTOID, FLOAT8OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, JSONBOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID,
        TIMESTAMPTZOID,
    ],
};
static DUPLICATE: Stmt = Stmt {
    sql: "UPDATE billing.events SET deliveries = deliveries + 1, last_delivery_at = now()
           WHERE provider = $1 AND event_id = $2 RETURNING body = $3, status",
    args: &[TEXTOID, TEXTOID, TEXTOID],
};
/// A fetched event already stored: nothing to write (it is no delivery, and its body is
/// the API's rendering, which a re-run of the sync would bring again and again).
static STORED: Stmt = Stmt { sql: "SELECT 1 FROM billing.events WHERE provider = $1 AND event_id = $2", args: &[TEXTOID, TEXTOID] };
static VARIANT: Stmt = Stmt {
    sql: "INSERT INTO billing.event_variants (provider, event_id, received_at, body, headers)
          VALUES ($1, $2, clock_timestamp(), $3, $4) ON CONFLICT DO NOTHING",
    args: &[TEXTOID, TEXTOID, TEXTOID, JSONBOID],
};
static RESULT: Stmt = Stmt {
    sql: "UPDATE billing.events SET status = $3, detail = $4, customer = coalesce($5, customer),
              applied_at = CASE WHEN $3 = 'failed' THEN applied_at ELSE $6 END
           WHERE provider = $1 AND event_id = $2",
    args: &[TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID],
};

/// `now()` as a parameter: Citus refuses a non-immutable function inside a CASE.
fn xact_start() -> DatumWithOid<'static> {
    TimestampWithTimeZone::try_from(unsafe { pgrx::pg_sys::GetCurrentTransactionStartTimestamp() })
        .unwrap_or_else(|_| TimestampWithTimeZone::positive_infinity())
        .into()
}

/// Serialises the deliveries of one event until the end of the transaction: a session
/// delivering an event that another session is applying waits here, then finds it stored.
fn lock_event(provider: &str, id: &str) {
    crate::pg::spi::xact_lock(crate::pg::spi::LockClass::Event, &[provider, id]);
}

/// A delivery, verified and parsed.
struct Delivery {
    provider: String,
    id: String,
    kind: String,
    created: Option<i64>,
    api_version: Option<String>,
    object_id: Option<String>,
    provider_customer: Option<String>,
    stripe: Option<event::Event>,
}

fn parse_delivery(provider: Provider, endpoint: &str, body: &str, webhook_id: Option<String>) -> Result<Delivery> {
    let bad = |m: String| BillingError::new(BAD_EVENT, format!("webhook for endpoint \"{endpoint}\" refused: {m}"));
    match provider {
        Provider::Stripe => {
            let e = event::parse(body).map_err(bad)?;
            Ok(Delivery {
                provider: apply::PROVIDER.to_string(),
                id: e.id.clone(),
                kind: e.kind.clone(),
                created: Some(e.created),
                api_version: e.api_version.clone(),
                object_id: e.object.as_ref().and_then(|o| event::s(o, &["id"])).map(str::to_string),
                provider_customer: e.object.as_ref().and_then(|o| event::id_of(o, "customer")),
                stripe: Some(e),
            })
        }
        Provider::Standard => {
            let v: Value = serde_json::from_str(body).map_err(|e| bad(format!("body is not JSON: {e}")))?;
            let o = v.as_object().ok_or_else(|| bad("body is not a JSON object".into()))?;
            Ok(Delivery {
                // Standard Webhooks ids are unique per sender: key them by endpoint.
                provider: format!("standard:{endpoint}"),
                id: webhook_id.ok_or_else(|| bad("no webhook-id".into()))?,
                kind: o.get("type").and_then(Value::as_str).unwrap_or("unknown").to_string(),
                created: None,
                api_version: None,
                object_id: None,
                provider_customer: None,
                stripe: None,
            })
        }
    }
}

/// `(event_id text, status text, detail text)`, one row (see `one_row`).
#[pg_extern(sql = false)]
fn ingest(endpoint: Option<&str>, headers: Option<AnyElement>, body: Option<&str>) {
    crate::pg::one_row::answer(ingest_impl(endpoint, headers, body))
}
crate::sql_entry!(pg_finfo_billing_ingest, billing_ingest, ingest_wrapper, jsonb = [1], one_row);

fn ingest_impl(endpoint: Option<&str>, headers: Option<AnyElement>, body: Option<&str>) -> Result<EventRow> {
    let endpoint = need(endpoint, "endpoint")?;
    let body = need(body, "body")?;
    let max = MAX_BYTES.get() as usize;
    if body.len() > max {
        return Err(BillingError::new(
            TOO_LARGE,
            format!("webhook for endpoint \"{endpoint}\" refused: body of {} bytes is over the limit of {max}", body.len()),
        ));
    }
    let headers = Headers::of(headers)?;
    let h = &headers.map;
    Spi::connect_mut(|c| {
        let (provider, secrets) = endpoint_of(c, endpoint)?;
        let Some(provider) = provider else {
            return Err(BillingError::new(UNKNOWN_ENDPOINT, format!("unknown webhook endpoint \"{endpoint}\"")));
        };
        let provider = Provider::parse(&provider).ok_or_else(|| BillingError::invalid("bad provider"))?;
        let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
        let lookup = |name: &str| h.get(name).cloned();
        let now = unix_secs(crate::clock::now());
        let v =
            signature::verify(provider, &secrets, &lookup, body.as_bytes(), now, TOLERANCE.get() as i64, max).map_err(|e| sig_error(e, endpoint))?;
        let d = parse_delivery(provider, endpoint, body, v.webhook_id)?;
        store_and_apply(c, d, endpoint, body, Some(&headers), Via::Delivery)
    })
}

/// How an event reached us.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    /// A signed webhook delivery.
    Delivery,
    /// Fetched from the provider's API by a role trusted to (`billing_sync`).
    Fetch,
}

/// Stores a verified (or fetched) event once and applies it, or answers `duplicate`.
/// A fetched event has no headers (stored as `{}`).
fn store_and_apply(c: &mut SpiClient<'_>, d: Delivery, endpoint: &str, body: &str, headers: Option<&Headers>, via: Via) -> Result<EventRow> {
    let headers_param = || headers.map_or_else(|| crate::pg::spi::jsonb_param(serde_json::json!({})), Headers::param);
    let cluster = crate::cluster::citus();
    let insert = |c: &mut SpiClient<'_>, status: &str, detail: &str, customer: &Option<String>| {
        run(
            c,
            &INSERT_EVENT,
            &[
                d.provider.as_str().into(),
                d.id.as_str().into(),
                endpoint.into(),
                d.kind.as_str().into(),
                d.created.map_or_else(DatumWithOid::null::<f64>, |x| (x as f64).into()),
                opt_text(&d.api_version),
                opt_text(&d.object_id),
                opt_text(&d.provider_customer),
                body.into(),
                headers_param(),
                status.into(),
                detail.into(),
                opt_text(customer),
                if via == Via::Fetch { "fetch" } else { "delivery" }.into(),
                xact_start(),
            ],
        )
        .map(|t| !t.is_empty())
    };
    if cluster {
        // On Citus the advisory lock would be this node's only: the event's row is the
        // lock instead. It is written first (a second delivery's INSERT, on any node,
        // waits for this transaction and then finds it), and its outcome after the apply.
        if !insert(c, "ignored", "being applied", &None)? {
            return duplicate(c, &d, body, via, headers_param).map(|r| r.expect("a conflicting event row"));
        }
    } else {
        lock_event(&d.provider, &d.id);
        if let Some(dup) = duplicate(c, &d, body, via, headers_param)? {
            return Ok(dup);
        }
    }
    let outcome = match &d.stripe {
        Some(e) => apply_event(e),
        None => Outcome {
            status: "ignored".to_string(),
            detail: "verified and stored; no built-in effects for Standard Webhooks events".to_string(),
            customer: None,
        },
    };
    if cluster {
        run(
            c,
            &RESULT,
            &[
                d.provider.as_str().into(),
                d.id.as_str().into(),
                outcome.status.as_str().into(),
                outcome.detail.as_str().into(),
                opt_text(&outcome.customer),
                xact_start(),
            ],
        )?;
    } else if !insert(c, &outcome.status, &outcome.detail, &outcome.customer)? {
        // Only a snapshot older than the other session's commit gets here (REPEATABLE
        // READ raises 40001 itself; under READ COMMITTED the lock above rules it out):
        // what was applied must not stay, and a retry finds the event stored.
        return Err(BillingError::new(
            crate::error::SERIALIZATION,
            format!("event {} of {} was stored concurrently; retry the delivery", d.id, d.provider),
        ));
    }
    if let Some(e) = &d.stripe {
        after_apply(c, e, &outcome, true)?;
    }
    Ok((d.id, outcome.status, Some(outcome.detail)))
}

/// The answer to an event stored before (or by a concurrent session that committed
/// first): `duplicate`, counting the delivery and keeping a differing body; `None` if the
/// event is not stored.
fn duplicate<'h>(
    c: &mut SpiClient<'_>,
    d: &Delivery,
    body: &str,
    via: Via,
    headers_param: impl Fn() -> DatumWithOid<'h>,
) -> Result<Option<EventRow>> {
    // Most events are new: their absence is seen by the index (`direct`), before any
    // statement. (A concurrent session's uncommitted insert is as invisible to the
    // statements; the insert that follows waits for it.)
    if direct::usable() && direct::exists(&direct::EVENT, &[direct::text(d.provider.as_str()), direct::text(&d.id)]) == Some(false) {
        return Ok(None);
    }
    match via {
        Via::Fetch => {
            if !run(c, &STORED, &[d.provider.as_str().into(), d.id.as_str().into()])?.is_empty() {
                return Ok(Some((d.id.clone(), "duplicate".to_string(), Some("already stored".to_string()))));
            }
        }
        Via::Delivery => {
            let t = run(c, &DUPLICATE, &[d.provider.as_str().into(), d.id.as_str().into(), body.into()])?;
            if !t.is_empty() {
                let same = t.first().get::<bool>(1)?.unwrap_or(true);
                if !same {
                    run(c, &VARIANT, &[d.provider.as_str().into(), d.id.as_str().into(), body.into(), headers_param()])?;
                }
                let detail =
                    if same { "already received" } else { "already received; this delivery's body differs and is kept in billing.event_variants" };
                return Ok(Some((d.id.clone(), "duplicate".to_string(), Some(detail.to_string()))));
            }
        }
    }
    Ok(None)
}

/// `(event_id text, status text, detail text)` of an event fetched from the provider's
/// API (`GET /v1/events`): no signature to check, so only `billing_sync` and the owner
/// may call it; otherwise exactly a delivery (stored once, applied, or a duplicate).
#[pg_extern(sql = false)]
fn ingest_fetched(endpoint: Option<&str>, body: Option<&str>) {
    crate::pg::one_row::answer(ingest_fetched_impl(endpoint, body))
}
crate::sql_entry!(pg_finfo_billing_ingest_fetched, billing_ingest_fetched, ingest_fetched_wrapper, jsonb = [], one_row);

/// How far the sync got: the newest event handed in, whatever became of it.
static SYNC_MARK: Stmt = Stmt {
    sql:
        "INSERT INTO billing.sync_marks AS m (endpoint, synced_through, updated_at) VALUES ($1, to_timestamp($2), now())
          ON CONFLICT (endpoint) DO UPDATE SET synced_through = greatest(m.synced_through, EXCLUDED.synced_through), updated_at = EXCLUDED.updated_at",
    args: &[TEXTOID, FLOAT8OID],
};

fn ingest_fetched_impl(endpoint: Option<&str>, body: Option<&str>) -> Result<EventRow> {
    let endpoint = need(endpoint, "endpoint")?;
    let body = need(body, "body")?;
    let max = MAX_BYTES.get() as usize;
    if body.len() > max {
        return Err(BillingError::new(
            TOO_LARGE,
            format!("fetched event for endpoint \"{endpoint}\" refused: body of {} bytes is over the limit of {max}", body.len()),
        ));
    }
    Spi::connect_mut(|c| {
        let Some(provider) = endpoint_of(c, endpoint)?.0 else {
            return Err(BillingError::new(UNKNOWN_ENDPOINT, format!("unknown webhook endpoint \"{endpoint}\"")));
        };
        if Provider::parse(&provider) != Some(Provider::Stripe) {
            return Err(BillingError::invalid(format!("endpoint \"{endpoint}\" is a {provider} endpoint: only Stripe events are fetched")));
        }
        let d = parse_delivery(Provider::Stripe, endpoint, body, None)?;
        let created = d.created;
        let row = store_and_apply(c, d, endpoint, body, None, Via::Fetch)?;
        if let Some(t) = created {
            run(c, &SYNC_MARK, &[endpoint.into(), (t as f64).into()])?;
        }
        Ok(row)
    })
}

fn opt_text(x: &Option<String>) -> DatumWithOid<'_> {
    x.as_deref().map_or_else(DatumWithOid::null::<&str>, |s| s.into())
}

/// What applying an event came to.
struct Outcome {
    status: String,
    detail: String,
    customer: Option<String>,
}

/// Applies an event in a subtransaction: a failure rolls back its effects only, and
/// becomes the outcome `failed` with the error, so the raw event is still stored.
fn apply_event(e: &event::Event) -> Outcome {
    match subxact(std::panic::AssertUnwindSafe(|| apply::apply(e))) {
        Ok(a) => Outcome { status: a.outcome.status().to_string(), detail: a.outcome.detail().to_string(), customer: a.customer },
        Err(err) => Outcome { status: "failed".to_string(), detail: format!("{}: {}", err.code, err.message), customer: None },
    }
}

/// What follows an outcome once it is recorded: the outbox row of a failure, the access
/// note of the customer, and with `cascade` the customer's waiting events, which this
/// event may have unblocked (it may have linked the customer or brought the subscription).
fn after_apply(c: &mut SpiClient<'_>, e: &event::Event, o: &Outcome, cascade: bool) -> Result<()> {
    if o.status == "failed" && cascade {
        crate::access::outbox::write(c, &EVENT_FAILED, &[e.id.as_str().into(), e.kind.as_str().into(), o.detail.as_str().into()])?;
    }
    if let (Some(cust), "applied") = (&o.customer, o.status.as_str()) {
        let now = crate::clock::now();
        if cascade {
            let pc = e.object.as_ref().and_then(|o| event::id_of(o, "customer"));
            if crate::access::api::note_access_waiting(c, cust, pc.as_deref(), now)? {
                replay_waiting(c, Some(cust), pc.as_deref())?;
            }
        } else {
            crate::access::api::note_access(c, cust, now)?;
        }
    }
    Ok(())
}

static EVENT_FAILED: Stmt = Stmt {
    sql: "INSERT INTO billing.outbox (kind, payload) VALUES ('event_failed',
              jsonb_build_object('provider', 'stripe', 'event_id', $1::text, 'type', $2::text, 'error', $3::text))",
    args: &[TEXTOID, TEXTOID, TEXTOID],
};
/// A customer's failed events, with their provider order (sorted in Rust: there are
/// almost always none, and a Sort node costs its set-up on every ingest).
static WAITING: Stmt = Stmt {
    sql: "SELECT event_id, created FROM billing.events
           WHERE status = 'failed' AND provider = 'stripe' AND (customer = $1 OR provider_customer = $2)",
    args: &[TEXTOID, TEXTOID],
};
static EVENT_FOR_REPLAY: Stmt = Stmt {
    sql: "UPDATE billing.events SET attempts = attempts + CASE WHEN status = 'failed' THEN 1 ELSE 0 END
           WHERE provider = $1 AND event_id = $2 RETURNING status, body, detail",
    args: &[TEXTOID, TEXTOID],
};

/// Applies again, in provider order, the failed events of a customer (by the application's
/// id or the provider's).
fn replay_waiting(c: &mut SpiClient<'_>, customer: Option<&str>, provider_customer: Option<&str>) -> Result<Vec<EventRow>> {
    let mut ids = vec![];
    let t = run(
        c,
        &WAITING,
        &[customer.map_or_else(DatumWithOid::null::<&str>, |s| s.into()), provider_customer.map_or_else(DatumWithOid::null::<&str>, |s| s.into())],
    )?;
    for r in t {
        ids.push((r.get::<TimestampWithTimeZone>(2)?.map(micros), r.get::<String>(1)?.unwrap_or_default()));
    }
    // Provider order: by created (NULLs last, as ORDER BY puts them), then event id.
    ids.sort_by(|a, b| (a.0.is_none(), a.0, &a.1).cmp(&(b.0.is_none(), b.0, &b.1)));
    let ids: Vec<String> = ids.into_iter().map(|x| x.1).collect();
    let mut out = vec![];
    for id in ids {
        out.push(replay_one(c, apply::PROVIDER, &id)?);
    }
    Ok(out)
}

fn replay_one(c: &mut SpiClient<'_>, provider: &str, id: &str) -> Result<EventRow> {
    let t = run(c, &EVENT_FOR_REPLAY, &[provider.into(), id.into()])?;
    if t.is_empty() {
        return Err(BillingError::new(crate::error::UNKNOWN, format!("unknown event {id} of provider {provider}")));
    }
    let r = t.first();
    let status = r.get::<String>(1)?.unwrap_or_default();
    let body = r.get::<String>(2)?.unwrap_or_default();
    if status != "failed" || provider != apply::PROVIDER {
        return Ok((id.to_string(), status, r.get::<String>(3)?));
    }
    let e = event::parse(&body).map_err(|m| BillingError::new(BAD_EVENT, format!("stored event {id}: {m}")))?;
    let o = apply_event(&e);
    run(c, &RESULT, &[provider.into(), id.into(), o.status.as_str().into(), o.detail.as_str().into(), opt_text(&o.customer), xact_start()])?;
    after_apply(c, &e, &o, false)?;
    Ok((id.to_string(), o.status, Some(o.detail)))
}

/// `(event_id text, status text, detail text)`, one row (see `one_row`).
#[pg_extern(sql = false)]
fn replay(provider: Option<&str>, event_id: Option<&str>) {
    let r = (|| {
        let p = need(provider, "provider")?;
        let id = need(event_id, "event_id")?;
        Spi::connect_mut(|c| replay_one(c, p, id))
    })();
    crate::pg::one_row::answer(r)
}
crate::sql_entry!(pg_finfo_billing_replay, billing_replay, replay_wrapper, jsonb = [], one_row);

static LINK: Stmt = Stmt {
    sql: "INSERT INTO billing.provider_customers AS p (provider, provider_customer, customer) VALUES ($1, $2, $3)
          ON CONFLICT (provider, provider_customer) DO UPDATE SET provider = p.provider RETURNING customer",
    args: &[TEXTOID, TEXTOID, TEXTOID],
};

#[pg_extern(sql = false)]
fn link_customer(
    customer: Option<&str>,
    provider_customer_id: Option<&str>,
    provider: Option<&str>,
) -> TableIterator<'static, (name!(event_id, String), name!(status, String), name!(detail, Option<String>))> {
    deliver(link_impl(customer, provider_customer_id, provider).map(TableIterator::new), TableIterator::empty)
}
crate::sql_entry!(pg_finfo_billing_link_customer, billing_link_customer, link_customer_wrapper);

fn link_impl(customer: Option<&str>, pc: Option<&str>, provider: Option<&str>) -> Result<Vec<EventRow>> {
    let customer = customer_arg(customer)?;
    let pc = need(pc, "provider_customer_id")?;
    if pc.is_empty() {
        return Err(BillingError::invalid(format!("provider_customer_id must not be empty (customer \"{customer}\")")));
    }
    let provider = provider.unwrap_or(apply::PROVIDER);
    if provider != apply::PROVIDER {
        return Err(BillingError::invalid(format!("unknown provider {provider:?}: customers are linked for stripe")));
    }
    Spi::connect_mut(|c| {
        run(c, &crate::ledger::store::CREATE, &[customer.into()])?;
        let owner = run(c, &LINK, &[provider.into(), pc.into(), customer.into()])?.first().get::<String>(1)?.unwrap_or_default();
        if owner != customer {
            return Err(BillingError::invalid(format!("provider customer {pc} is already linked to customer \"{owner}\", not \"{customer}\"")));
        }
        replay_waiting(c, Some(customer), Some(pc))
    })
}
