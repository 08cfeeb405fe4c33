//! `access`, `can_access`, `charge`, and the outbox row when a customer's access changes.
use super::decide::{decide, kept, kept_allowed, Customer, Kept, Reason, Sub, NEVER};
use crate::clock;
use crate::error::{deliver, BillingError, Result, RATE_LIMITED};
use crate::ledger::api::{amount_arg, customer_arg, debit_impl, key_arg};
use crate::ledger::store::Op;
use crate::pg::direct;
use crate::pg::spi::{micros, run, run_ro, ts, Stmt};
use crate::pg::whole_row::Fields;
use crate::usage::bucket::{Bucket, Limit};
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::BuiltinOid::*;
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiTupleTable};
use serde_json::json;

/// The statement of `inputs`, with `$extra` columns after the five it reads: the
/// customer's and the subscription's rows whole, the plan's features and grace, and
/// whether the customer ever had a grant.
macro_rules! inputs_sql {
    ($extra:literal) => {
        inputs_sql!(
            "CASE WHEN (s.sub).status IS NULL AND (c.balance <= 0 OR c.next_event_at <= $2 OR c.slots > 1)
                  THEN EXISTS (SELECT FROM billing.grants g WHERE g.customer = $1) END",
            $extra
        )
    };
    ($granted:literal, $extra:literal) => {
        inputs_sql!($granted, $extra, "")
    };
    // With `$joins` for the `$extra` columns (`record_usage` reads its own rows along).
    ($granted:literal, $extra:literal, $joins:literal) => {
        concat!(
            "SELECT c, s.sub, p.features, (extract(epoch FROM coalesce(p.grace, '3 days')) * 1000000)::int8, ",
            $granted,
            $extra,
            " FROM billing.customers c
            LEFT JOIN LATERAL (
                  SELECT s AS sub, s.plan FROM billing.subscriptions s WHERE s.customer = $1
                   ORDER BY s.status IN ('canceled', 'incomplete_expired'),
                            coalesce(s.paid_through, s.current_period_end) DESC NULLS LAST, s.subscription_id
                   LIMIT 1) s ON true
            LEFT JOIN billing.plans p ON p.plan = s.plan ",
            $joins,
            " WHERE c.customer = $1"
        )
    };
}

/// The rows INPUTS reads whole (see `whole_row`): the customer's, and its subscription's.
static CUSTOMER: Fields =
    Fields(&["frozen", "balance", "next_event_at", "slots", "access_reason", "sub_counts_until", "sub_allowed_until", "sub_plan"]);
static SUBSCRIPTION: Fields = Fields(&["status", "plan", "current_period_end", "paid_through", "cancel_at_period_end", "trial_end"]);

static INPUTS: Stmt = Stmt {
    // Whether the customer ever had a grant matters only without a subscription and
    // with no credits (`decide`: no_credits or no_plan); the scan is skipped otherwise.
    // The credits are those of the row unless something is due ($2) or it is slotted.
    sql: inputs_sql!(""),
    args: &[TEXTOID, TIMESTAMPTZOID],
};
/// `INPUTS` for what needs the answer, not the reason (`can_access` when the kept answer
/// is not enough; the admission of
/// `charge` and `record_usage`, which read again with `INPUTS` when they refuse): whether
/// the customer ever had a grant only tells no_credits from no_plan, both refusals.
/// Without it the plan has no subplan to set up and lock on every call (callgrind, in a
/// loop as a policy runs it: 154,500 instructions a call instead of 185,100).
static INPUTS_ALLOWED: Stmt = Stmt { sql: inputs_sql!("NULL::bool", ""), args: &[TEXTOID, TIMESTAMPTZOID] };
/// `INPUTS` for the access note after an applied event, and whether failed events of the
/// customer (by its id or the provider's, $3) wait for a replay: one statement, where the
/// replay's own query ran after every applied event and almost always found none.
static INPUTS_WAITING: Stmt = Stmt {
    sql: inputs_sql!(
        ", EXISTS (SELECT FROM billing.events e WHERE e.status = 'failed' AND e.provider = 'stripe'
                      AND (e.customer = $1 OR e.provider_customer = $3))"
    ),
    args: &[TEXTOID, TIMESTAMPTZOID, TEXTOID],
};
/// `INPUTS_WAITING` on Citus, where events are distributed by their own id and cannot be
/// joined to the customer's shard: the answer is left open (NULL), and the replay's own
/// query, which looks for the customer's failed events across shards, runs instead.
static INPUTS_WAITING_APART: Stmt = Stmt { sql: inputs_sql!(", NULL::bool"), args: &[TEXTOID, TIMESTAMPTZOID] };

/// What access needs to know about a customer, read in one statement (or by its indexes).
#[derive(Debug, PartialEq)]
pub struct Inputs {
    pub customer: Customer,
    pub status: Option<String>,
    pub period_end: Option<i64>,
}

/// Who reads the inputs: an access decision, the access note (which also reads the
/// reason noted last), or the note after an applied event (and whether failed events
/// of the customer, or of this provider customer, wait for a replay).
#[derive(Clone, Copy)]
pub(crate) enum Reader<'a> {
    /// `can_access`, admissions: the answer only (the reason may read no_plan for no_credits).
    Allowed,
    Access,
    Note,
    NoteAfterEvent(Option<&'a str>),
}

/// What the note reads beside the inputs.
#[derive(Debug, PartialEq)]
pub(crate) struct Noted {
    reason: Option<String>,
    events_wait: bool,
    /// The access answer kept on the row, which the note brings up to the subscriptions
    /// it read (`keep`).
    kept: Option<(Kept, Option<String>)>,
}

#[cfg(any(test, feature = "pg_test"))]
impl Noted {
    /// Whether failed events of the customer wait for a replay.
    pub(crate) fn events_wait(&self) -> bool {
        self.events_wait
    }
}

pub fn inputs(c: &mut SpiClient<'_>, customer: &str, now: i64) -> Result<Inputs> {
    Ok(read_inputs(c, customer, now, Reader::Access)?.0)
}

fn read_inputs(c: &mut SpiClient<'_>, customer: &str, now: i64, reader: Reader) -> Result<(Inputs, Noted)> {
    read_inputs_by(c, customer, now, reader, true)
}

/// `read_inputs`, by the indexes where they can be read so (`by_index`, `read_direct`),
/// else by the statement.
pub(crate) fn read_inputs_by(c: &mut SpiClient<'_>, customer: &str, now: i64, reader: Reader, by_index: bool) -> Result<(Inputs, Noted)> {
    let direct = if by_index { read_direct(customer, now, &reader)? } else { None };
    let read = match direct {
        Some(r) => r,
        None => read_statement(c, customer, now, &reader)?,
    };
    let Some(read) = read else {
        // No customer row: the replay's own query looks for events by the provider's id.
        let noted = Noted { reason: None, events_wait: true, kept: None };
        return Ok((Inputs { customer: Customer::default(), status: None, period_end: None }, noted));
    };
    inputs_of(c, customer, now, reader, read)
}

/// What an `inputs_sql!` row says, however it was read: the customer's row, the
/// subscription every reader chooses (with its plan's features and grace), whether the
/// customer ever had a grant (where it is asked) and whether failed events of the
/// customer wait for a replay (`NoteAfterEvent`).
struct Read {
    c_row: crate::pg::whole_row::Row,
    sub: Option<Sub>,
    ever_granted: Option<bool>,
    events_wait: Option<bool>,
}

/// The inputs by the statement; None when the customer has no row.
fn read_statement(c: &mut SpiClient<'_>, customer: &str, now: i64, reader: &Reader) -> Result<Option<Read>> {
    // The notes read with a snapshot of their own (`run`), taken after the customer's lock:
    // they keep the access answer on the row (`keep`), which must follow every
    // subscription committed by the writers that held the lock before.
    let t = match reader {
        Reader::Allowed => run_ro(c, &INPUTS_ALLOWED, &[customer.into(), ts(now).into()])?,
        Reader::Access => run_ro(c, &INPUTS, &[customer.into(), ts(now).into()])?,
        Reader::Note => run(c, &INPUTS, &[customer.into(), ts(now).into()])?,
        Reader::NoteAfterEvent(_) if crate::cluster::citus() => run(c, &INPUTS_WAITING_APART, &[customer.into(), ts(now).into()])?,
        Reader::NoteAfterEvent(pc) => {
            run(c, &INPUTS_WAITING, &[customer.into(), ts(now).into(), pc.map_or_else(DatumWithOid::null::<&str>, |s| s.into())])?
        }
    };
    if t.is_empty() {
        return Ok(None);
    }
    let r = t.first();
    let events_wait = match reader {
        Reader::NoteAfterEvent(_) => r.get::<bool>(6)?,
        _ => None,
    };
    Ok(Some(Read { c_row: crate::pg::whole_row::read(&r, 1, &CUSTOMER)?, sub: sub_of(&r)?, ever_granted: r.get::<bool>(5)?, events_wait }))
}

/// The fields of a plan the inputs read, and of a failed event.
static PLAN_ROW: Fields = Fields(&["features", "grace"]);
static EVENT_ROW: Fields = Fields(&["provider"]);

/// A plan's grace when the subscription has no plan row: the statements' `coalesce`.
const DEFAULT_GRACE_US: i64 = 3 * 86_400 * 1_000_000;

/// The inputs by the indexes (`direct`), as the statement would read them: the customer's
/// row, the first subscription of `subscriptions_current` (the statement's order), its
/// plan, and, where the statement asks, a grant and a failed event. `None` where they
/// cannot be read so (the statement reads instead, as for a failed event that is not
/// Stripe's); `Some(None)` when the customer has no row.
fn read_direct(customer: &str, now: i64, reader: &Reader) -> Result<Option<Option<Read>>> {
    if !direct::usable() {
        return Ok(None);
    }
    // As the statements: read-only under the calling statement's snapshot (`run_ro`), or,
    // for the notes, under a new one (`run`). `run_ro` reads read-only only until the
    // transaction writes (pgrx), and then as a mutating statement does.
    let wrote = unsafe { pg_sys::GetCurrentTransactionIdIfAny() } != pg_sys::InvalidTransactionId;
    let ro = matches!(reader, Reader::Allowed | Reader::Access) && !wrote;
    let fetch = |reads: &[(&direct::Index, &[pg_sys::Datum])]| if ro { direct::fetch_ro(reads) } else { direct::fetch(reads) };
    let id = [direct::text(customer)];
    let pc = match reader {
        Reader::NoteAfterEvent(Some(p)) => Some([direct::text(p)]),
        _ => None,
    };
    let mut reads: Vec<(&direct::Index, &[pg_sys::Datum])> = vec![(&direct::CUSTOMER, &id), (&direct::SUB_CURRENT, &id)];
    if let Reader::NoteAfterEvent(_) = reader {
        reads.push((&direct::FAILED_OF_CUSTOMER, &id));
        if let Some(p) = &pc {
            reads.push((&direct::FAILED_OF_PROVIDER_CUSTOMER, p));
        }
    }
    let Some(rows) = fetch(&reads) else { return Ok(None) };
    let Some(c_row) = crate::pg::whole_row::read_datum(rows[0], &CUSTOMER)? else { return Ok(Some(None)) };
    let events_wait = match reader {
        Reader::NoteAfterEvent(_) => {
            let mut wait = false;
            for e in &rows[2..] {
                if let Some(e) = crate::pg::whole_row::read_datum(*e, &EVENT_ROW)? {
                    if e.get::<String>(0)?.as_deref() != Some(crate::webhook::apply::PROVIDER) {
                        return Ok(None);
                    }
                    wait = true;
                }
            }
            Some(wait)
        }
        _ => None,
    };
    let sub = match crate::pg::whole_row::read_datum(rows[1], &SUBSCRIPTION)? {
        None => None,
        Some(s) => {
            let (features, grace_us) = match s.get::<String>(1)? {
                None => (vec![], DEFAULT_GRACE_US),
                Some(plan) => {
                    let Some(p) = fetch(&[(&direct::PLAN, &[direct::text(&plan)])]) else { return Ok(None) };
                    match crate::pg::whole_row::read_datum(p[0], &PLAN_ROW)? {
                        None => (vec![], DEFAULT_GRACE_US),
                        Some(p) => (
                            p.get::<Vec<Option<String>>>(0)?.unwrap_or_default().into_iter().flatten().collect(),
                            p.get::<Interval>(1)?.map_or(DEFAULT_GRACE_US, |g| epoch_micros(g.months(), g.days(), g.micros())),
                        ),
                    }
                }
            };
            sub_from(s, features, grace_us)?
        }
    };
    // As the statement's CASE: asked only without a subscription, and with no credits
    // (or credits that need computing).
    let ever_granted = match reader {
        Reader::Allowed => None,
        _ => {
            let balance = c_row.get::<i64>(1)?.unwrap_or(0);
            let due = ts_of(&c_row, 2)?.is_some_and(|t| t <= now);
            let slotted = c_row.get::<i32>(3)?.unwrap_or(1) > 1;
            if sub.is_none() && (balance <= 0 || due || slotted) {
                let Some(g) = fetch(&[(&direct::GRANT_OF, &id)]) else { return Ok(None) };
                Some(g[0].is_some())
            } else {
                None
            }
        }
    };
    Ok(Some(Some(Read { c_row, sub, ever_granted, events_wait })))
}

/// Whether `read_direct` reads the inputs (rather than leaving them to the statement).
#[cfg(any(test, feature = "pg_test"))]
pub(crate) fn read_direct_used(customer: &str, now: i64, reader: Reader) -> bool {
    read_direct(customer, now, &reader).unwrap().is_some()
}

/// `extract(epoch FROM i) * 1000000` of an interval of `months`, `days` and `micros`, as
/// PostgreSQL computes it: a year of 365.25 days, a month of 30 (whole microseconds,
/// saturating far beyond any grace period).
pub fn epoch_micros(months: i32, days: i32, micros: i64) -> i64 {
    let (m, d) = (months as i128, days as i128);
    let secs = (1461 * (m / 12) + 120 * (m % 12) + 4 * d) * (86_400 / 4);
    (secs * 1_000_000 + micros as i128).clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

/// Takes apart what the inputs' statement (or the indexes) read.
fn inputs_of(c: &mut SpiClient<'_>, customer: &str, now: i64, reader: Reader, read: Read) -> Result<(Inputs, Noted)> {
    let Read { c_row, sub, ever_granted, events_wait } = read;
    let mut balance = c_row.get::<i64>(1)?.unwrap_or(0);
    let next_event = ts_of(&c_row, 2)?.unwrap_or(i64::MAX);
    let status = sub.as_ref().map(|s| s.status.clone());
    let frozen = c_row.get::<bool>(0)?.unwrap_or(false);
    let ever_granted = ever_granted.unwrap_or(false);
    // The cached balance is exact until the customer's next expiry; past it, compute.
    if now >= next_event {
        balance = Op::read(c, customer, now)?.peek_balance()?;
    }
    let slots = c_row.get::<i32>(3)?.unwrap_or(1);
    if slots > 1 {
        // A slotted customer's credits are spread over its accounts.
        balance = balance.saturating_add(crate::ledger::slots::slot_balances(c, customer, slots, now)?);
    }
    let period_end = sub.as_ref().and_then(|s| s.period_end);
    let noted = match reader {
        Reader::Allowed | Reader::Access => Noted { reason: None, events_wait: false, kept: None },
        Reader::Note => Noted { reason: c_row.get(4)?, events_wait: false, kept: Some(stored_kept(&c_row)?) },
        Reader::NoteAfterEvent(_) => Noted { reason: c_row.get(4)?, events_wait: events_wait.unwrap_or(true), kept: Some(stored_kept(&c_row)?) },
    };
    Ok((Inputs { customer: Customer { known: true, frozen, balance, ever_granted, sub }, status, period_end }, noted))
}

fn ts_of(row: &crate::pg::whole_row::Row, i: usize) -> Result<Option<i64>> {
    Ok(row.get::<TimestampWithTimeZone>(i)?.map(micros))
}

/// The chosen subscription of a row of an `inputs_sql!` statement (columns 2 to 4).
fn sub_of(r: &SpiTupleTable<'_>) -> Result<Option<Sub>> {
    let Some(s) = crate::pg::whole_row::read_opt(r, 2, &SUBSCRIPTION)? else { return Ok(None) };
    let features = r.get::<Vec<Option<String>>>(3)?.unwrap_or_default().into_iter().flatten().collect();
    sub_from(s, features, r.get::<i64>(4)?.unwrap_or(0))
}

/// A subscription row (`SUBSCRIPTION`) with its plan's features and grace.
fn sub_from(s: crate::pg::whole_row::Row, features: Vec<String>, grace_us: i64) -> Result<Option<Sub>> {
    let Some(status) = s.get::<String>(0)? else { return Ok(None) };
    Ok(Some(Sub {
        status,
        plan: s.get(1)?,
        features,
        grace_us,
        period_end: ts_of(&s, 2)?,
        paid_through: ts_of(&s, 3)?,
        cancel_at_period_end: s.get::<bool>(4)?.unwrap_or(false),
        trial_end: ts_of(&s, 5)?,
    }))
}

/// The access answer kept on a customer's row (`CUSTOMER` fields 5 to 7), and its plan.
fn stored_kept(c_row: &crate::pg::whole_row::Row) -> Result<(Kept, Option<String>)> {
    let k = Kept { counts_until: ts_of(c_row, 5)?.unwrap_or(NEVER), allowed_until: ts_of(c_row, 6)?.unwrap_or(NEVER) };
    Ok((k, c_row.get(7)?))
}

type AccessRow = (bool, String, Option<String>, Option<String>, Option<i64>, Option<TimestampWithTimeZone>);

/// `(allowed, reason, plan, status, balance, period_end)`, one row (see `one_row`).
#[pg_extern(sql = false)]
fn access(customer: Option<&str>, feature: Option<&str>) {
    crate::pg::one_row::answer(access_impl(customer, feature))
}
crate::sql_entry!(pg_finfo_billing_access, billing_access, access_wrapper, jsonb = [], one_row);

fn access_impl(customer: Option<&str>, feature: Option<&str>) -> Result<AccessRow> {
    let customer = customer_arg(customer)?;
    let now = clock::now();
    Spi::connect_mut(|c| {
        let i = inputs(c, customer, now)?;
        let reason = decide(&i.customer, feature, now);
        let known = i.customer.known;
        let plan = i.customer.sub.as_ref().and_then(|s| s.plan.clone());
        Ok((reason.allowed(), reason.as_str().to_string(), plan, i.status, known.then_some(i.customer.balance), i.period_end.map(ts)))
    })
}

#[pg_extern(sql = false)]
fn can_access(customer: Option<&str>, feature: Option<&str>) -> Option<bool> {
    deliver(can_access_impl(customer, feature).map(Some), || None)
}
crate::sql_entry!(pg_finfo_billing_can_access, billing_can_access, can_access_wrapper);

fn can_access_impl(customer: Option<&str>, feature: Option<&str>) -> Result<bool> {
    // NULL or an invalid id is simply not allowed: a policy must not error on odd rows.
    let Some(customer) = customer.filter(|c| !c.is_empty() && c.len() <= crate::ledger::api::MAX_CUSTOMER) else {
        return Ok(false);
    };
    let now = clock::now();
    Spi::connect_mut(|c| {
        let Some(r) = read_kept(c, customer, feature)? else {
            return Ok(false); // unknown: no_plan
        };
        if !r.frozen && now >= r.kept.counts_until && (now >= r.next_event || r.slots > 1) {
            // The answer is the credits', and the row's balance is not all of them (an
            // expiry is due, or the customer is slotted): the full read computes them.
            return Ok(decide(&read_inputs(c, customer, now, Reader::Allowed)?.0.customer, feature, now).allowed());
        }
        Ok(kept_allowed(true, r.frozen, r.kept, r.feature_ok, r.balance, now))
    })
}

/// What `can_access` reads: the customer's row (the kept answer and the credits), and
/// whether the kept plan has the feature asked for (true when none is).
struct KeptRow {
    frozen: bool,
    balance: i64,
    next_event: i64,
    slots: i32,
    kept: Kept,
    feature_ok: bool,
}

/// The customer's and the kept plan's rows by their indexes (`direct`, read-only: the
/// calling statement's snapshot, as KEPT's), else KEPT or KEPT_FEATURE. None: no such
/// customer.
fn read_kept(c: &mut SpiClient<'_>, customer: &str, feature: Option<&str>) -> Result<Option<KeptRow>> {
    use crate::pg::{direct, whole_row};
    static ROW: Fields = Fields(&["frozen", "balance", "next_event_at", "slots", "sub_counts_until", "sub_allowed_until", "sub_plan"]);
    static FEATURES: Fields = Fields(&["features"]);
    if direct::usable() {
        if let Some(rows) = direct::fetch_ro(&[(&direct::CUSTOMER, &[direct::text(customer)])]) {
            let Some(r) = whole_row::read_datum(rows[0], &ROW)? else { return Ok(None) };
            let feature_ok = match (feature, r.get::<String>(6)?) {
                (None, _) => Some(true),
                (Some(_), None) => Some(false),
                (Some(f), Some(plan)) => match direct::fetch_ro(&[(&direct::PLAN, &[direct::text(&plan)])]) {
                    Some(p) => Some(match whole_row::read_datum(p[0], &FEATURES)? {
                        Some(p) => p.get::<Vec<Option<String>>>(0)?.unwrap_or_default().iter().any(|x| x.as_deref() == Some(f)),
                        None => false,
                    }),
                    None => None,
                },
            };
            if let Some(feature_ok) = feature_ok {
                let ts = |i| -> Result<Option<i64>> { Ok(r.get::<TimestampWithTimeZone>(i)?.map(micros)) };
                return Ok(Some(KeptRow {
                    frozen: r.get::<bool>(0)?.unwrap_or(false),
                    balance: r.get::<i64>(1)?.unwrap_or(0),
                    next_event: ts(2)?.unwrap_or(i64::MAX),
                    slots: r.get::<i32>(3)?.unwrap_or(1),
                    kept: Kept { counts_until: ts(4)?.unwrap_or(NEVER), allowed_until: ts(5)?.unwrap_or(NEVER) },
                    feature_ok,
                }));
            }
        }
    }
    let t = match feature {
        None => run_ro(c, &KEPT, &[customer.into()])?,
        Some(f) => run_ro(c, &KEPT_FEATURE, &[customer.into(), f.into()])?,
    };
    if t.is_empty() {
        return Ok(None);
    }
    let r = t.first();
    Ok(Some(KeptRow {
        frozen: r.get::<bool>(1)?.unwrap_or(false),
        balance: r.get::<i64>(2)?.unwrap_or(0),
        next_event: r.get::<TimestampWithTimeZone>(3)?.map_or(i64::MAX, micros),
        slots: r.get::<i32>(4)?.unwrap_or(1),
        kept: Kept {
            counts_until: r.get::<TimestampWithTimeZone>(5)?.map_or(NEVER, micros),
            allowed_until: r.get::<TimestampWithTimeZone>(6)?.map_or(NEVER, micros),
        },
        feature_ok: feature.is_none() || r.get::<bool>(7)?.unwrap_or(false),
    }))
}

// ---- the access answer kept on the customer's row (decide.rs, `Kept`) ----

/// `can_access`'s read: the customer's row alone (the kept answer and the credits).
static KEPT: Stmt = Stmt {
    sql: "SELECT frozen, balance, next_event_at, slots, sub_counts_until, sub_allowed_until FROM billing.customers WHERE customer = $1",
    args: &[TEXTOID],
};
/// `KEPT` with whether the kept plan has feature $2 (no plan: it has none, as `decide`
/// reads a plan that is not defined).
static KEPT_FEATURE: Stmt = Stmt {
    sql: "SELECT c.frozen, c.balance, c.next_event_at, c.slots, c.sub_counts_until, c.sub_allowed_until, $2 = ANY (p.features)
            FROM billing.customers c LEFT JOIN billing.plans p ON p.plan = c.sub_plan WHERE c.customer = $1",
    args: &[TEXTOID, TEXTOID],
};
/// The new kept answer, only over the one it was computed against: a refresh from an older
/// read never overwrites a newer one (a blocked UPDATE rechecks the row it then finds).
static KEEP: Stmt = Stmt {
    sql: "UPDATE billing.customers SET sub_counts_until = $2, sub_allowed_until = $3, sub_plan = $4
           WHERE customer = $1 AND (sub_counts_until, sub_allowed_until, sub_plan) IS NOT DISTINCT FROM ($5, $6, $7)",
    args: &[TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID, TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID, TEXTOID],
};

/// Takes the customer's lock (`store::lock_customer`, the one every writer of its row
/// takes first: a row lock here would deadlock with a debit holding the customer's
/// advisory lock and waiting for the row) before a write of its subscriptions, held to
/// the end of the transaction: their writers take turns, so the access note that follows
/// an applied event (`note`, which keeps the answer on the row) reads every subscription
/// committed.
pub fn lock_subscriber(c: &mut SpiClient<'_>, customer: &str) -> Result<()> {
    crate::ledger::store::lock_customer(c, customer)?;
    Ok(())
}

/// Writes the answer the subscription `sub` (the one every reader chooses) gives, over
/// the one `stored` that was read, when they differ.
fn keep(c: &mut SpiClient<'_>, customer: &str, sub: Option<&Sub>, stored: (Kept, Option<String>)) -> Result<()> {
    let want = (kept(sub), sub.and_then(|s| s.plan.clone()));
    if want != stored {
        let text = |p: &Option<String>| p.as_deref().map_or_else(DatumWithOid::null::<&str>, |p| p.into());
        run(
            c,
            &KEEP,
            &[
                customer.into(),
                ts(want.0.counts_until).into(),
                ts(want.0.allowed_until).into(),
                text(&want.1),
                ts(stored.0.counts_until).into(),
                ts(stored.0.allowed_until).into(),
                text(&stored.1),
            ],
        )?;
    }
    Ok(())
}

/// `billing._sub_kept(status, paid_through, period_end, cancel_at_period_end, trial_end,
/// grace_us)`: `{counts_until, allowed_until}` of `kept`, for SQL (the upgrade's fill,
/// `define_plan`, `verify`). A NULL status: no subscription.
#[pg_extern(sql = false, immutable, parallel_safe)]
fn sub_kept(
    status: Option<&str>,
    paid_through: Option<TimestampWithTimeZone>,
    period_end: Option<TimestampWithTimeZone>,
    cancel_at_period_end: Option<bool>,
    trial_end: Option<TimestampWithTimeZone>,
    grace_us: Option<i64>,
) -> Vec<TimestampWithTimeZone> {
    let sub = status.map(|status| Sub {
        status: status.to_string(),
        grace_us: grace_us.unwrap_or(0),
        period_end: period_end.map(micros),
        paid_through: paid_through.map(micros),
        cancel_at_period_end: cancel_at_period_end.unwrap_or(false),
        trial_end: trial_end.map(micros),
        ..Default::default()
    });
    let k = kept(sub.as_ref());
    vec![ts(k.counts_until), ts(k.allowed_until)]
}
crate::sql_entry!(pg_finfo_billing_sub_kept, billing_sub_kept, sub_kept_wrapper);

pub fn denied(customer: &str, reason: Reason, feature: Option<&str>) -> BillingError {
    let what = feature.map_or(String::new(), |f| format!(" to feature \"{f}\""));
    BillingError::new(reason.sqlstate(), format!("access{what} denied for customer \"{customer}\": {}", reason.as_str()))
        .detail(format!("reason: {}", reason.as_str()))
}

/// Checks access (and takes a rate-limit token) for an operation that needs it.
pub fn admit(c: &mut SpiClient<'_>, customer: &str, feature: Option<&str>, now: i64) -> Result<()> {
    let plan = allowed_plan(c, customer, feature, now)?;
    take_token(c, customer, plan.as_deref(), feature.unwrap_or(""), now)
}

/// The access decision of `admit` without the token: an error unless the customer may
/// use `feature` now; else its plan (for the rate limit the caller then takes).
pub fn allowed_plan(c: &mut SpiClient<'_>, customer: &str, feature: Option<&str>, now: i64) -> Result<Option<String>> {
    let i = read_inputs(c, customer, now, Reader::Allowed)?.0;
    allowed_plan_of(c, customer, feature, now, i)
}

/// The admission of `record_usage` (no feature): its plan, for the rate limit, from the
/// customer's row the caller read whole (a composite value) under the customer's lock
/// (the access answer kept on it, as `can_access` reads it). The full read (`allowed_plan`)
/// only when the row cannot tell (credits decide, and an expiry is due or the customer is
/// slotted) or when the answer is no, for the exact refusal.
pub fn admitted_plan(c: &mut SpiClient<'_>, customer: &str, now: i64, row: pg_sys::Datum) -> Result<Option<String>> {
    let row = crate::pg::whole_row::read_value(row, &CUSTOMER)?;
    let frozen = row.get::<bool>(0)?.unwrap_or(false);
    let next_event = ts_of(&row, 2)?.unwrap_or(i64::MAX);
    let slots = row.get::<i32>(3)?.unwrap_or(1);
    let (k, plan) = stored_kept(&row)?;
    let unsure = !frozen && now >= k.counts_until && (now >= next_event || slots > 1);
    if unsure || !kept_allowed(true, frozen, k, true, row.get::<i64>(1)?.unwrap_or(0), now) {
        return allowed_plan(c, customer, None, now);
    }
    Ok(plan)
}

/// `allowed_plan` on inputs the caller read (`allowed_inputs`).
pub fn allowed_plan_of(c: &mut SpiClient<'_>, customer: &str, feature: Option<&str>, now: i64, i: Inputs) -> Result<Option<String>> {
    if !i.customer.known {
        return Err(crate::ledger::store::unknown_customer(customer));
    }
    if !decide(&i.customer, feature, now).allowed() {
        // Refused: read again for the exact reason (and its SQLSTATE), which the answer
        // alone does not need (see INPUTS_ALLOWED).
        let i = inputs(c, customer, now)?;
        return Err(denied(customer, decide(&i.customer, feature, now), feature));
    }
    Ok(i.customer.sub.as_ref().and_then(|s| s.plan.clone()))
}

/// `(entry_id uuid, balance_after bigint, replayed boolean)`, one row (see `one_row`).
#[pg_extern(sql = false)]
fn charge(customer: Option<&str>, feature: Option<&str>, amount: Option<i64>, idempotency_key: Option<&str>) {
    crate::pg::one_row::answer(charge_impl(customer, feature, amount, idempotency_key))
}
crate::sql_entry!(pg_finfo_billing_charge, billing_charge, charge_wrapper, jsonb = [], one_row);

fn charge_impl(customer: Option<&str>, feature: Option<&str>, amount: Option<i64>, key: Option<&str>) -> Result<(pgrx::Uuid, i64, bool)> {
    let customer = customer_arg(customer)?;
    amount_arg(amount, "amount", customer)?;
    let k = key_arg(key, customer)?;
    let metadata = pgrx::JsonB(json!({ "feature": feature }));
    let now = clock::now();
    let seen = Spi::connect_mut(|c| crate::ledger::store::key_used(c, customer, k))?;
    if !seen {
        // A retry of a charge that went through replays whatever access says now.
        Spi::connect_mut(|c| {
            // The customer's row first, then the bucket: the same lock order as
            // record_usage, so the two never deadlock over one customer.
            drop(Op::lock_existing(c, customer, now)?);
            admit(c, customer, feature, now)
        })?;
    }
    debit_impl(Some(customer), amount, key, Some(metadata))
}

// ---- rate limits ----

/// The limits that may apply (at most four: customer or plan, feature or every feature);
/// `take_token` picks the most specific. Without ORDER BY ... LIMIT 1: a Sort's set-up
/// costs more than these rows.
static LIMIT: Stmt = Stmt {
    sql: "SELECT l.requests, (extract(epoch FROM l.per) * 1000000)::int8, l.subject || ':' || l.feature,
                 l.subject = $1, l.feature = $3
            FROM billing.limits l
           WHERE (l.subject = $1 OR l.subject = $2) AND l.feature IN ($3, '')",
    args: &[TEXTOID, TEXTOID, TEXTOID],
};
static BUCKET_ENSURE: Stmt = Stmt {
    sql: "INSERT INTO billing.buckets (customer, feature, tokens, at) VALUES ($1, $2, $3, $4)
          ON CONFLICT (customer, feature) DO NOTHING",
    args: &[TEXTOID, TEXTOID, INT8OID, TIMESTAMPTZOID],
};
static BUCKET_LOCK: Stmt =
    Stmt { sql: "SELECT tokens, at FROM billing.buckets WHERE customer = $1 AND feature = $2 FOR UPDATE", args: &[TEXTOID, TEXTOID] };
static BUCKET_SAVE: Stmt = Stmt {
    sql: "UPDATE billing.buckets SET tokens = $3, at = $4 WHERE customer = $1 AND feature = $2",
    args: &[TEXTOID, TEXTOID, INT8OID, TIMESTAMPTZOID],
};

/// One request through the customer's token bucket (a customer's own limit first, then
/// its plan's; a feature's limit first, then the one for every feature). Each limit has
/// its own bucket per customer (keyed `subject:feature`), locked while it is used, so
/// concurrent requests never let an extra one through.
pub fn take_token(c: &mut SpiClient<'_>, customer: &str, plan: Option<&str>, feature: &str, now: i64) -> Result<()> {
    match check_token(c, customer, plan, feature, now)? {
        Some(t) => save_token(c, customer, t),
        None => Ok(()),
    }
}

/// A token `check_token` found in a bucket, not yet taken (`save_token`): the bucket's
/// state once it is.
pub struct Token {
    feature: String,
    tokens: i64,
    at: i64,
}

/// `take_token` without taking: the bucket's row is locked (made full if it was missing,
/// which is the same as none) and BL006 raised if it is empty, but nothing is spent until
/// `save_token`. A batch's item takes its token only once its debit went through, so a
/// refused item leaves the bucket as it was. `None`: no limit applies.
pub fn check_token(c: &mut SpiClient<'_>, customer: &str, plan: Option<&str>, feature: &str, now: i64) -> Result<Option<Token>> {
    let mut best: Option<((bool, bool), Limit, String)> = None;
    for r in run(c, &LIMIT, &[customer.into(), plan.unwrap_or("").into(), feature.into()])? {
        let rank = (r.get::<bool>(4)?.unwrap_or(false), r.get::<bool>(5)?.unwrap_or(false));
        if best.as_ref().is_none_or(|b| rank > b.0) {
            let limit = Limit { requests: r.get::<i32>(1)?.unwrap_or(1) as i64, per_us: r.get::<i64>(2)?.unwrap_or(1).max(1) };
            best = Some((rank, limit, r.get(3)?.unwrap_or_default()));
        }
    }
    let Some((_, limit, bucket_feature)) = best else {
        return Ok(None);
    };
    let full = limit.full(now);
    run(c, &BUCKET_ENSURE, &[customer.into(), bucket_feature.as_str().into(), (full.tokens as i64).into(), ts(now).into()])?;
    let b = run(c, &BUCKET_LOCK, &[customer.into(), bucket_feature.as_str().into()])?;
    let b = b.first();
    let bucket = Bucket { tokens: b.get::<i64>(1)?.unwrap_or(0) as i128, at: b.get::<TimestampWithTimeZone>(2)?.map(micros).unwrap_or(now) };
    match limit.take(bucket, now) {
        Ok(n) => Ok(Some(Token { feature: bucket_feature, tokens: n.tokens as i64, at: n.at })),
        Err(wait_us) => {
            let ms = (wait_us + 999) / 1000;
            Err(BillingError::new(
                RATE_LIMITED,
                format!(
                    "rate limit reached for customer \"{customer}\"{}",
                    if feature.is_empty() { String::new() } else { format!(" on \"{feature}\"") }
                ),
            )
            .detail(format!("retry after {ms} ms"))
            .hint(format!("{} requests per {} s", limit.requests, limit.per_us / 1_000_000)))
        }
    }
}

/// Takes the token `check_token` found.
pub fn save_token(c: &mut SpiClient<'_>, customer: &str, t: Token) -> Result<()> {
    run(c, &BUCKET_SAVE, &[customer.into(), t.feature.as_str().into(), t.tokens.into(), ts(t.at).into()])?;
    Ok(())
}

// ---- access changes, for the outbox ----

/// The new reason on the customer's row, returning the one it replaces (no row: it was
/// noted already). A self-join on the customer rather than a CTE writing the outbox as
/// well: on Citus the customer and the outbox are on different nodes.
static ACCESS_NOTE: Stmt = Stmt {
    sql: "UPDATE billing.customers c SET access_reason = $2
            FROM (SELECT customer, access_reason FROM billing.customers WHERE customer = $1) o
           WHERE c.customer = $1 AND o.customer = c.customer AND c.access_reason IS DISTINCT FROM $2
          RETURNING o.access_reason",
    args: &[TEXTOID, TEXTOID],
};
static ACCESS_CHANGED: Stmt = Stmt {
    sql: "INSERT INTO billing.outbox (customer, kind, payload)
          VALUES ($1, 'access_changed', jsonb_build_object('from', $2::text, 'to', $3::text, 'allowed', $4::bool))",
    args: &[TEXTOID, TEXTOID, TEXTOID, BOOLOID],
};

/// Writes an `access_changed` outbox row if the customer's access reason differs from the
/// last one noted. Called where access can change: applied webhook events, freezes, and
/// `maintenance()` for changes that only time brings (a grace period ending).
pub fn note_access(c: &mut SpiClient<'_>, customer: &str, now: i64) -> Result<()> {
    note(c, customer, now, Reader::Note).map(|_| ())
}

/// `note_access` after an applied event, reading in the same statement whether failed
/// events of the customer (or of provider customer `pc`) wait for a replay.
pub fn note_access_waiting(c: &mut SpiClient<'_>, customer: &str, pc: Option<&str>, now: i64) -> Result<bool> {
    note(c, customer, now, Reader::NoteAfterEvent(pc))
}

fn note(c: &mut SpiClient<'_>, customer: &str, now: i64, reader: Reader) -> Result<bool> {
    let (i, noted) = read_inputs(c, customer, now, reader)?;
    if !i.customer.known {
        return Ok(noted.events_wait);
    }
    // The kept answer follows what was just read of the subscriptions: after an applied
    // event its writer's (the subscription writers hold the customer's lock to the end).
    if let Some(stored) = noted.kept {
        keep(c, customer, i.customer.sub.as_ref(), stored)?;
    }
    let r = decide(&i.customer, None, now);
    // Unchanged as this statement saw it: no write (most applied events change nothing).
    // A concurrent change not yet committed is noted by its own transaction, and
    // `maintenance()` notes again whatever a race left behind.
    if noted.reason.as_deref() != Some(r.as_str()) {
        let t = run(c, &ACCESS_NOTE, &[customer.into(), r.as_str().into()])?;
        if !t.is_empty() {
            let before: Option<String> = t.first().get(1)?;
            super::outbox::write(c, &ACCESS_CHANGED, &[customer.into(), before.into(), r.as_str().into(), r.allowed().into()])?;
        }
    }
    Ok(noted.events_wait)
}

/// (In the one order batches lock customers in, as the updates below lock their rows.)
static ALL_SUBSCRIBED: Stmt = Stmt { sql: "SELECT DISTINCT customer FROM billing.subscriptions ORDER BY 1", args: &[] };

/// `note_access` for every customer with a subscription (for `maintenance()`), which
/// brings its kept answer up to date too.
pub fn note_all(c: &mut SpiClient<'_>, now: i64) -> Result<i64> {
    let mut all = vec![];
    for r in run(c, &ALL_SUBSCRIBED, &[])? {
        all.push(r.get::<String>(1)?.unwrap_or_default());
    }
    for cust in &all {
        note_access(c, cust, now)?;
    }
    Ok(all.len() as i64)
}
