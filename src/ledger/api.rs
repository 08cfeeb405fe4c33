//! The ledger's SQL functions (SPEC section 1). Each validates its arguments, locks the
//! one customer it concerns, and leaves the decisions to `rules`.
//!
//! A spending call (debit, reserve) reads in one direction: `slots` routes it to an
//! account, the store locks and reads that account, the call draws from it (`rules`) and
//! writes, and the store finishes it (`debit_as`, `reserve_impl`). It calls into `slots`
//! again only on a slotted customer's own paths: a row that contradicts the route
//! (`reroute`), a slot too short (`gather_from`, `spread`).
use super::entry_id;
use super::rules::{self, negate, refund_plan, settle_consumed, settle_lines, settle_plan, Acct, Entry, Grant, Hold, Kind, NEVER};
use super::slots;
use super::store::{decode_lines, unknown_customer, Extra, Keyed, Op, Prefetched, ResRow};
use crate::clock;
use crate::error::{deliver, BillingError, Result, DENIED, INSUFFICIENT, KEY_REUSED, NOT_ACTIVE, UNKNOWN};
use crate::pg::direct;
use crate::pg::spi::{id_of, micros, new_id, run, ts, uuid, Stmt};
use crate::pg::whole_row::{self, Fields};
use pgrx::pg_sys::BuiltinOid::*;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::JsonB;
use serde_json::json;

pub const MAX_KEY: usize = 255;
pub const MAX_CUSTOMER: usize = 255;

type EntryRow = (pgrx::Uuid, i64, bool);

/// The answer of the functions that return `(entry_id uuid, balance_after bigint,
/// replayed boolean)` (see `one_row`).
fn row(r: Result<EntryRow>) {
    crate::pg::one_row::answer(r)
}

// ---- argument checks: 22023 with the argument's name ----

pub fn need<T>(v: Option<T>, what: &str) -> Result<T> {
    v.ok_or_else(|| BillingError::invalid(format!("{what} must not be NULL")))
}

pub fn customer_arg(c: Option<&str>) -> Result<&str> {
    let c = need(c, "customer")?;
    if c.is_empty() || c.len() > MAX_CUSTOMER {
        return Err(BillingError::invalid(format!("customer id must be 1 to {MAX_CUSTOMER} bytes, got {}", c.len())));
    }
    Ok(c)
}

pub fn key_arg<'k>(k: Option<&'k str>, customer: &str) -> Result<&'k str> {
    let k = k.ok_or_else(|| BillingError::invalid(format!("idempotency_key must not be NULL (customer \"{customer}\")")))?;
    if k.is_empty() || k.len() > MAX_KEY {
        return Err(BillingError::invalid(format!("idempotency_key must be 1 to {MAX_KEY} bytes, got {} (customer \"{customer}\")", k.len())));
    }
    Ok(k)
}

pub fn amount_arg(a: Option<i64>, what: &str, customer: &str) -> Result<i64> {
    let a = a.ok_or_else(|| BillingError::invalid(format!("{what} must not be NULL (customer \"{customer}\")")))?;
    if a <= 0 {
        return Err(BillingError::invalid(format!("{what} must be positive, got {a} (customer \"{customer}\")")));
    }
    Ok(a)
}

fn ttl_arg(ttl: Option<Interval>, what: &str) -> Result<i64> {
    let t = need(ttl, what)?;
    let us = t.as_micros();
    if us <= 0 || us > i64::MAX as i128 / 2 {
        return Err(BillingError::invalid(format!("{what} must be a positive interval")));
    }
    Ok(us as i64)
}

fn key_reused(customer: &str, key: &str, first: &Keyed) -> BillingError {
    BillingError::new(KEY_REUSED, format!("idempotency key \"{key}\" of customer \"{customer}\" was already used with different arguments"))
        .detail(format!("The key belongs to the {} entry {} (amount {}).", first.kind, first.entry_id, first.amount))
        .hint("Use a new key for a new request; retry with the same arguments to get the first result.")
}

fn insufficient(customer: &str, what: &str, e: rules::Insufficient) -> BillingError {
    BillingError::new(
        INSUFFICIENT,
        format!("insufficient credits for customer \"{customer}\": {what} of {} needs more than the {} available", e.requested, e.available),
    )
}

fn frozen(customer: &str) -> BillingError {
    BillingError::new(DENIED, format!("customer \"{customer}\" is frozen"))
        .detail("A frozen customer (for example with an open dispute) cannot spend credits.")
}

fn connect<T>(f: impl FnOnce(&mut SpiClient<'_>) -> Result<T>) -> Result<T> {
    Spi::connect_mut(f)
}

// ---- grant ----

static GRANT_INSERT: Stmt = Stmt {
    sql: "INSERT INTO billing.grants (customer, id, seq, source, amount, remaining, open, expires_at, priority, metadata, entry_id, created_at)
          VALUES ($1, $2, $3, $4, $5, $11, $11 > 0, $6, $7, $8, $9, $10)",
    args: &[TEXTOID, UUIDOID, INT8OID, TEXTOID, INT8OID, TIMESTAMPTZOID, INT4OID, JSONBOID, UUIDOID, TIMESTAMPTZOID, INT8OID],
};
static GRANT_ROW: Stmt = Stmt {
    sql: "SELECT amount, source, expires_at, priority, metadata FROM billing.grants WHERE customer = $1 AND id = $2",
    args: &[TEXTOID, UUIDOID],
};

#[pg_extern(sql = false)]
#[allow(clippy::too_many_arguments)]
fn grant(
    customer: Option<&str>,
    amount: Option<i64>,
    idempotency_key: Option<&str>,
    source: Option<&str>,
    expires_at: Option<TimestampWithTimeZone>,
    priority: Option<i32>,
    metadata: Option<JsonB>,
) -> Option<pgrx::Uuid> {
    deliver(grant_as(new_id(), customer, amount, idempotency_key, source, expires_at, priority, metadata).map(Some), || None)
}
crate::sql_entry!(pg_finfo_billing_grant, billing_grant, grant_wrapper, jsonb = [6]);

/// A grant whose id, if it is made, is `id` (a purchase records the id before its grant
/// is made). A replayed key returns the id of the grant it made.
#[allow(clippy::too_many_arguments)]
pub fn grant_as(
    id: [u8; 16],
    customer: Option<&str>,
    amount: Option<i64>,
    key: Option<&str>,
    source: Option<&str>,
    expires_at: Option<TimestampWithTimeZone>,
    priority: Option<i32>,
    metadata: Option<JsonB>,
) -> Result<pgrx::Uuid> {
    let customer = customer_arg(customer)?;
    let amount = amount_arg(amount, "amount", customer)?;
    let key = key_arg(key, customer)?;
    let source = source.unwrap_or("manual");
    let priority = priority.unwrap_or(0);
    let metadata = metadata.map(|j| j.0).unwrap_or_else(|| json!({}));
    let expires = expires_at.map(micros).unwrap_or(NEVER);
    let now = clock::now();
    connect(|c| {
        let mut op = Op::lock(c, customer, now, true)?.ok_or_else(|| unknown_customer(customer))?;
        op.not_a_slot()?;
        if let Some(k) = op.find_key(key)? {
            let same = k.kind == "grant" && {
                let gid = k.grant_id.unwrap_or_else(crate::pg::spi::nil);
                let t = op.run(&GRANT_ROW, &[customer.into(), gid.into()])?;
                let r = t.first();
                r.get::<i64>(1)? == Some(amount)
                    && r.get::<String>(2)?.as_deref() == Some(source)
                    && r.get::<TimestampWithTimeZone>(3)?.map(micros) == Some(expires)
                    && r.get::<i32>(4)? == Some(priority)
                    && r.get::<JsonB>(5)?.map(|j| j.0) == Some(metadata.clone())
            };
            return if same { Ok(k.grant_id.unwrap_or_else(crate::pg::spi::nil)) } else { Err(key_reused(customer, key, &k)) };
        }
        // Checked after the key, so retrying a grant once its expiry has passed replays.
        if expires <= op.now {
            return Err(BillingError::invalid(format!("expires_at of the grant for customer \"{customer}\" is not in the future")));
        }
        op.catch_up()?;
        let entry_id = op.entry_id_at(op.next_seq());
        let lines = op.book.grant_lines(id, amount);
        // The row starts with what its entry gives it (less any debt repaid), so `finish`
        // has no update of a row this call inserted (a dead version, a second index entry
        // and the foreign key checked again).
        let remaining = lines[0].1;
        op.run(
            &GRANT_INSERT,
            &[
                customer.into(),
                uuid(&id).into(),
                op.next_seq().into(),
                source.into(),
                amount.into(),
                ts(expires).into(),
                priority.into(),
                crate::pg::spi::jsonb_param(metadata.clone()),
                uuid(&entry_id).into(),
                ts(op.now).into(),
                remaining.into(),
            ],
        )?;
        op.add_grant(Grant { id, remaining: 0, expires_at: expires, priority, seq: op.next_seq() });
        op.row_has(id, remaining);
        let e = Entry { kind: Kind::Grant, at: op.now, lines, grant: Some(id), hold: None };
        op.write(&e, Extra { key: Some(key), metadata: Some(metadata), entry_id: Some(entry_id), ..Default::default() })?;
        op.finish()?;
        Ok(uuid(&id))
    })
}

// ---- debit ----

#[pg_extern(sql = false)]
fn debit(customer: Option<&str>, amount: Option<i64>, idempotency_key: Option<&str>, metadata: Option<JsonB>) {
    row(debit_impl(customer, amount, idempotency_key, metadata))
}
crate::sql_entry!(pg_finfo_billing_debit, billing_debit, debit_wrapper, jsonb = [3], one_row);

pub fn debit_impl(customer: Option<&str>, amount: Option<i64>, key: Option<&str>, metadata: Option<JsonB>) -> Result<(pgrx::Uuid, i64, bool)> {
    debit_as(customer, amount, key, metadata, false)
}

/// The error of a key the journal holds for another operation than the caller's.
pub fn key_taken(customer: &str, key: &str) -> BillingError {
    BillingError::new(KEY_REUSED, format!("idempotency key \"{key}\" of customer \"{customer}\" was already used by another operation"))
}

fn debit_as(
    customer: Option<&str>,
    amount: Option<i64>,
    key: Option<&str>,
    metadata: Option<JsonB>,
    new_key: bool,
) -> Result<(pgrx::Uuid, i64, bool)> {
    let customer = customer_arg(customer)?;
    let amount = amount_arg(amount, "amount", customer)?;
    let key = key_arg(key, customer)?;
    let metadata = metadata.map(|j| j.0).unwrap_or_else(|| json!({}));
    let now = clock::now();
    connect(|c| {
        // The account the key routes to, locked, and the entry already under the key; a
        // row that contradicts the route (a slot count this backend did not know) routes
        // the call again.
        let mut route = slots::route(customer, key);
        let (mut op, keyed) = loop {
            match Op::lock_for_spend(c, &route.account, route.parent(), now, key)? {
                Some((op, keyed)) if route.confirmed_by(&op) => break (op, keyed),
                other => route = slots::reroute(route, other)?,
            }
        };
        // Under REPEATABLE READ the row lock makes a stale snapshot fail with 40001. A
        // slot's row is locked only by a call that does not gather (a row lock cannot be
        // given back): a gatherer locks every slot's row under all the slot locks, and an
        // attempt that writes fails at its row update if the row changed.
        if !route.slotted() {
            op.lock_row()?;
        }
        // (On a slot account `keyed` includes the customer's own journal: see
        // SPEND_LOOKUP_SLOT.)
        match debit_in(&mut op, keyed, customer, amount, key, &metadata, new_key)? {
            Try::Done(r) => {
                op.finish()?;
                Ok(r)
            }
            Try::Replayed(r) => Ok(r),
            Try::Short(e) if !route.slotted() => Err(e),
            // The key's slot is too short: the call runs again on the customer's own
            // account, every slot's credits gathered into it.
            Try::Short(_) => {
                let (mut op, keyed) = slots::gather_from(op, &route, now)?;
                let r = match debit_in(&mut op, keyed, customer, amount, key, &metadata, new_key)? {
                    Try::Done(r) | Try::Replayed(r) => r,
                    Try::Short(e) => return Err(e),
                };
                slots::spread(op, customer, route.n, now)?;
                Ok(r)
            }
        }
    })
}

/// A debit of a batch's item (`debit_many`, `record_usage_many`), or of `record_usage`: as
/// `debit` (`new_key`: with a key that must be new to the journal, as a usage's debit's: a
/// usage is replayed from its own row, so an entry already under the key was made by
/// another operation), with the arguments checked, but an item refused leaves nothing behind,
/// since the batch goes on. The checks come before any write (key, frozen, credits), and a
/// refusal for want of credits keeps only the expiries the attempt wrote down (finished,
/// as `maintenance` would write them). A slotted customer's call may gather its slots
/// before it is refused: it runs whole in a subtransaction instead (rare, and dearer).
///
/// `pre`: the customer's row and the entry under the key, read by the batch under its lock
/// (`store::prefetch_spend`) with nothing written to the customer since; it stands for the
/// call's own read when it confirms an unslotted route. `later`: where a debit written
/// on an unslotted account leaves its last writes for the batch to write with the others'
/// (`deferred`); the batch writes them before anything reads the account again.
pub fn debit_item(
    customer: &str,
    amount: i64,
    key: &str,
    metadata: &serde_json::Value,
    new_key: bool,
    pre: Option<Prefetched>,
    later: Option<&mut super::deferred::Deferred>,
) -> Result<EntryRow> {
    let now = clock::now();
    let plain = connect(|c| {
        let mut route = slots::route(customer, key);
        let (mut op, keyed) = match pre {
            Some((o, keyed)) if !route.slotted() && o.slots == 1 && o.slot_of.is_none() => (Op::open_prefetched(c, customer, now, o), keyed),
            _ => loop {
                match Op::lock_for_spend(c, &route.account, route.parent(), now, key)? {
                    Some((op, keyed)) if route.confirmed_by(&op) => break (op, keyed),
                    other => route = slots::reroute(route, other)?,
                }
            },
        };
        if route.slotted() {
            op.unlock();
            return Ok(None);
        }
        op.lock_row()?;
        let r = debit_in(&mut op, keyed, customer, amount, key, metadata, new_key);
        match r {
            Ok(Try::Done(r)) => {
                op.finish_into(later)?;
                Ok(Some(Ok(r)))
            }
            Ok(Try::Replayed(r)) => Ok(Some(Ok(r))),
            Ok(Try::Short(e)) | Err(e) => {
                if op.wrote() {
                    op.finish()?;
                }
                Ok(Some(Err(e)))
            }
        }
    })?;
    match plain {
        Some(r) => r,
        None => {
            let metadata = JsonB(metadata.clone());
            crate::pg::spi::subxact(std::panic::AssertUnwindSafe(|| debit_as(Some(customer), Some(amount), Some(key), Some(metadata), new_key)))
        }
    }
}

/// What a spending call (debit, reserve) on one locked account came to.
enum Try<T> {
    /// Written; the caller finishes the account.
    Done(T),
    /// The key's first result, nothing written.
    Replayed(T),
    /// Not enough credits in this account; nothing was written but expiries (kept). The
    /// error is what the caller gets when gathering cannot help.
    Short(BillingError),
}

/// The debit on one locked account: the first result of the key (`keyed`), or the entry
/// written, or `Short` when the account's credits are not enough.
fn debit_in(
    op: &mut Op,
    keyed: Option<Keyed>,
    customer: &str,
    amount: i64,
    key: &str,
    metadata: &serde_json::Value,
    new_key: bool,
) -> Result<Try<EntryRow>> {
    if let Some(k) = keyed {
        if new_key {
            return Err(key_taken(customer, key));
        }
        return if k.kind == "debit" && k.amount == -amount && &k.metadata == metadata {
            Ok(Try::Replayed((k.entry_id, k.balance_after, true)))
        } else {
            Err(key_reused(customer, key, &k))
        };
    }
    let take = match draw(op, amount, Acct::Debt, customer, "debit")? {
        Ok(t) => t,
        Err(e) => return Ok(Try::Short(e)),
    };
    let e = Entry { kind: Kind::Debit, at: op.now, lines: negate(&take), grant: None, hold: None };
    let w = op.write(&e, Extra { key: Some(key), metadata: Some(metadata.clone()), ..Default::default() })?;
    Ok(Try::Done((w.entry_id, w.balance_after, false)))
}

/// What a spending call takes `amount` from (after writing down what expired), `rest`
/// standing for the overdraft; or the BL001 it gets when the account is short.
fn draw(op: &mut Op, amount: i64, rest: Acct, customer: &str, what: &str) -> Result<std::result::Result<Vec<(Acct, i64)>, BillingError>> {
    if op.frozen {
        return Err(frozen(customer));
    }
    op.catch_up()?;
    if let Some(take) = op.take_from_head(amount) {
        return Ok(Ok(take));
    }
    op.load_live_grants()?;
    Ok(op.book.allocate(amount, op.now, rest).map_err(|e| insufficient(customer, what, e)))
}

// ---- holds ----

/// The account holding reservation `$1`: by the account number `$2` a located id names
/// (see `Op::hold_id`; NULL for any other id), else through the partial index of the
/// other ids (made before 0.9.0, or by accounts numbered past 40 bits).
pub(crate) static RES_CUSTOMER: Stmt = Stmt {
    sql: "SELECT r.customer FROM billing.customers c JOIN billing.reservations r ON r.customer = c.customer AND r.id = $1
           WHERE c.num = $2
          UNION ALL
          SELECT r.customer FROM billing.reservations r WHERE r.id = $1 AND r.id < 'ff000000-0000-0000-0000-000000000000'::uuid",
    args: &[UUIDOID, INT8OID],
};
/// The customer-qualified forms' lookup: one customer's rows only (one shard on Citus).
static RES_OF: Stmt = Stmt { sql: "SELECT FROM billing.reservations WHERE customer = $1 AND id = $2", args: &[TEXTOID, UUIDOID] };
/// A reservation's row, whole (`RES`), where it cannot be read by its index (`direct`).
static RES_ROW: Stmt = Stmt { sql: "SELECT r FROM billing.reservations r WHERE customer = $1 AND id = $2", args: &[TEXTOID, UUIDOID] };
static RES: Fields = Fields(&["status", "expires_at", "accounts", "amounts", "settled", "end_entry", "consumed_accounts", "consumed_amounts"]);
static RES_EXTEND: Stmt =
    Stmt { sql: "UPDATE billing.reservations SET expires_at = $3 WHERE customer = $1 AND id = $2", args: &[TEXTOID, UUIDOID, TIMESTAMPTZOID] };

#[pg_extern(sql = false)]
fn reserve(customer: Option<&str>, amount: Option<i64>, idempotency_key: Option<&str>, ttl: Option<Interval>) -> Option<pgrx::Uuid> {
    deliver(reserve_impl(customer, amount, idempotency_key, ttl).map(Some), || None)
}
crate::sql_entry!(pg_finfo_billing_reserve, billing_reserve, reserve_wrapper);

fn reserve_impl(customer: Option<&str>, amount: Option<i64>, key: Option<&str>, ttl: Option<Interval>) -> Result<pgrx::Uuid> {
    let customer = customer_arg(customer)?;
    let amount = amount_arg(amount, "amount", customer)?;
    let key = key_arg(key, customer)?;
    let ttl_iv = need(ttl, "ttl")?;
    let ttl_us = ttl_arg(Some(ttl_iv), "ttl")?;
    let now = clock::now();
    let metadata = json!({ "ttl_us": ttl_us });
    connect(|c| {
        // The account the key routes to, as for a debit (`debit_as`).
        let mut route = slots::route(customer, key);
        let (mut op, keyed) = loop {
            match Op::lock_for_spend(c, &route.account, route.parent(), now, key)? {
                Some((op, keyed)) if route.confirmed_by(&op) => break (op, keyed),
                other => route = slots::reroute(route, other)?,
            }
        };
        if !route.slotted() {
            op.lock_row()?;
        }
        match reserve_in(&mut op, keyed, customer, amount, key, ttl_iv, ttl_us, &metadata)? {
            Try::Done(id) => {
                op.finish()?;
                Ok(id)
            }
            Try::Replayed(id) => Ok(id),
            Try::Short(e) if !route.slotted() => Err(e),
            // The key's slot is too short: the call runs again on the customer's own
            // account, every slot's credits gathered into it.
            Try::Short(_) => {
                let (mut op, keyed) = slots::gather_from(op, &route, now)?;
                let id = match reserve_in(&mut op, keyed, customer, amount, key, ttl_iv, ttl_us, &metadata)? {
                    Try::Done(id) | Try::Replayed(id) => id,
                    Try::Short(e) => return Err(e),
                };
                slots::spread(op, customer, route.n, now)?;
                Ok(id)
            }
        }
    })
}

/// The hold on one locked account, as `debit_in`: its reservation's id.
#[allow(clippy::too_many_arguments)]
fn reserve_in(
    op: &mut Op,
    keyed: Option<Keyed>,
    customer: &str,
    amount: i64,
    key: &str,
    ttl_iv: Interval,
    ttl_us: i64,
    metadata: &serde_json::Value,
) -> Result<Try<pgrx::Uuid>> {
    if let Some(k) = keyed {
        return if k.kind == "hold" && k.amount == -amount && &k.metadata == metadata {
            Ok(Try::Replayed(k.reservation_id.unwrap_or_else(crate::pg::spi::nil)))
        } else {
            Err(key_reused(customer, key, &k))
        };
    }
    let id = op.hold_id();
    let take = match draw(op, amount, Acct::Borrow(id), customer, "reserve")? {
        Ok(t) => t,
        Err(e) => return Ok(Try::Short(e)),
    };
    let expires = op.now.saturating_add(ttl_us);
    let e = Entry { kind: Kind::Hold, at: op.now, lines: negate(&take), grant: None, hold: Some(id) };
    let w = op.write(&e, Extra { key: Some(key), metadata: Some(metadata.clone()), ..Default::default() })?;
    // The hold lives in the account it drew from (a slot's, for a slotted customer): the
    // row `finish` writes for the account.
    let at = op.now;
    op.write_res(ResRow::Hold { id, amount, ttl: ttl_iv, expires_at: expires, lines: take.clone(), hold_entry: w.entry_id, at })?;
    op.add_hold(Hold { id, lines: take, expires_at: expires });
    Ok(Try::Done(uuid(&id)))
}

struct Res {
    status: String,
    expires_at: i64,
    hold: Hold,
    settled: Option<i64>,
    end_entry: Option<pgrx::Uuid>,
    consumed: Vec<(Acct, i64)>,
}

fn res_customer(c: &mut SpiClient<'_>, id: &pgrx::Uuid) -> Result<String> {
    let unknown = || BillingError::new(UNKNOWN, format!("unknown reservation {id}"));
    let num = entry_id::locate(&id_of(id)).map(|l| l.0);
    if direct::usable() {
        if let Some(found) = res_customer_direct(id, num) {
            return found?.ok_or_else(unknown);
        }
    }
    let t = run(c, &RES_CUSTOMER, &[(*id).into(), num.into()])?;
    if t.is_empty() {
        return Err(unknown());
    }
    Ok(t.first().get::<String>(1)?.unwrap_or_default())
}
static RES_CUSTOMER_OF: Fields = Fields(&["customer"]);

/// RES_CUSTOMER by the indexes (`direct`): for a located id, the account its number
/// names (whether it holds the reservation is for the caller's read under the account's
/// lock, `res_row`); for any other, the partial index. None when the indexes cannot be
/// read so.
fn res_customer_direct(id: &pgrx::Uuid, num: Option<i64>) -> Option<Result<Option<String>>> {
    let read = match num {
        Some(num) => direct::fetch(&[(&direct::CUSTOMER_NUM, &[pgrx::pg_sys::Datum::from(num)])])?,
        None => direct::fetch(&[(&direct::RESERVATION_ID, &[direct::uuid(*id)])])?,
    };
    Some(whole_row::read_datum(read[0], &RES_CUSTOMER_OF).and_then(|r| r.map_or(Ok(None), |r| r.get::<String>(0))))
}

/// The account that holds reservation `rid`: by its id alone, or, named by the caller, the
/// customer's own (else, on one server, one of its slot accounts). BL003 when none.
fn hold_account(c: &mut SpiClient<'_>, customer: Option<&str>, rid: &pgrx::Uuid) -> Result<String> {
    let Some(customer) = customer else { return res_customer(c, rid) };
    if !run(c, &RES_OF, &[customer.into(), (*rid).into()])?.is_empty() {
        return Ok(customer.to_string());
    }
    let unknown = || BillingError::new(UNKNOWN, format!("unknown reservation {rid} of customer \"{customer}\""));
    if crate::cluster::citus() {
        return Err(unknown());
    }
    match res_customer(c, rid) {
        Ok(acct) if slots::is_slot_of(&acct, customer) => Ok(acct),
        _ => Err(unknown()),
    }
}

/// The reservation `rid` of the account `op` holds. Unknown: BL003, naming the customer
/// only when the caller named it (`named`; an id-only call found the account by the
/// number the id carries, and says no more than that the id names no hold).
fn res_row(op: &mut Op, rid: &pgrx::Uuid, named: bool) -> Result<Res> {
    let customer = op.customer.clone();
    let unknown = || match named {
        true => BillingError::new(UNKNOWN, format!("unknown reservation {rid} of customer \"{customer}\"")),
        false => BillingError::new(UNKNOWN, format!("unknown reservation {rid}")),
    };
    let read = match direct::usable() {
        true => direct::fetch(&[(&direct::RESERVATION, &[direct::text(&customer), direct::uuid(*rid)])]),
        false => None,
    };
    let row = match read {
        Some(rows) => rows[0],
        None => {
            let t = op.run(&RES_ROW, &[customer.as_str().into(), (*rid).into()])?;
            if t.is_empty() {
                None
            } else {
                t.first().get_datum_by_ordinal(1)?
            }
        }
    };
    let r = whole_row::read_datum(row, &RES)?.ok_or_else(unknown)?;
    let id = id_of(rid);
    let accts: Vec<pgrx::Uuid> = r.get(2)?.unwrap_or_default();
    let amounts: Vec<i64> = r.get(3)?.unwrap_or_default();
    let expires_at = r.get::<TimestampWithTimeZone>(1)?.map(micros).unwrap_or(NEVER);
    let caccts: Vec<pgrx::Uuid> = r.get(6)?.unwrap_or_default();
    let camounts: Vec<i64> = r.get(7)?.unwrap_or_default();
    Ok(Res {
        status: r.get(0)?.unwrap_or_default(),
        expires_at,
        hold: Hold { id, lines: decode_lines(&accts, &amounts, Some(&id)), expires_at },
        settled: r.get(4)?,
        end_entry: r.get(5)?,
        consumed: decode_lines(&caccts, &camounts, None),
    })
}

fn entry_balance(op: &mut Op, entry: &pgrx::Uuid) -> Result<i64> {
    op.final_balance(entry)
}

fn not_active(rid: &pgrx::Uuid, customer: &str, status: &str) -> BillingError {
    BillingError::new(NOT_ACTIVE, format!("reservation {rid} of customer \"{customer}\" is no longer active: {status}"))
}

/// Locks the reservation's customer and checks the hold is still active after catching
/// up (a hold past its ttl lapses here, at its own instant).
fn open_hold<'a, 'c>(c: &'a mut SpiClient<'c>, customer: Option<&str>, rid: &pgrx::Uuid, now: i64) -> Result<(Op<'a, 'c>, Res)> {
    let named = customer.is_some();
    let customer = hold_account(c, customer, rid)?;
    let mut op = Op::lock_existing(c, &customer, now)?;
    let res = res_row(&mut op, rid, named)?;
    Ok((op, res))
}

#[pg_extern(sql = false)]
fn settle(reservation_id: Option<pgrx::Uuid>, actual: Option<i64>) {
    row(settle_impl(None, reservation_id, actual))
}
crate::sql_entry!(pg_finfo_billing_settle, billing_settle, settle_wrapper, jsonb = [], one_row);

/// `billing.settle(customer, reservation_id, actual)`: the same, every statement filtered
/// by the customer (one shard on Citus, where the call is delegated by its customer).
#[pg_extern(sql = false)]
fn settle_for(customer: Option<&str>, reservation_id: Option<pgrx::Uuid>, actual: Option<i64>) {
    row(customer_arg(customer).and_then(|c| settle_impl(Some(c), reservation_id, actual)))
}
crate::sql_entry!(pg_finfo_billing_settle_for, billing_settle_for, settle_for_wrapper, jsonb = [], one_row);

pub fn settle_impl(customer: Option<&str>, rid: Option<pgrx::Uuid>, actual: Option<i64>) -> Result<(pgrx::Uuid, i64, bool)> {
    let rid = need(rid, "reservation_id")?;
    let actual = need(actual, "actual")?;
    if actual < 0 {
        return Err(BillingError::invalid(format!("actual must not be negative, got {actual} (reservation {rid})")));
    }
    let now = clock::now();
    connect(|c| {
        let (mut op, res) = open_hold(c, customer, &rid, now)?;
        let customer = op.customer.clone();
        match res.status.as_str() {
            "settled" if res.settled == Some(actual) => {
                let e = res.end_entry.unwrap_or_else(crate::pg::spi::nil);
                let b = entry_balance(&mut op, &e)?;
                return Ok((e, b, true));
            }
            "settled" => {
                return Err(not_active(&rid, &customer, &format!("already settled with {}", res.settled.unwrap_or(0))));
            }
            "active" => {}
            other => return Err(not_active(&rid, &customer, other)),
        }
        op.catch_up()?;
        if res.expires_at <= op.now {
            return Err(not_active(&rid, &customer, "expired"));
        }
        let plan = settle_plan(&res.hold, actual);
        let mut extra = vec![];
        if plan.extra > 0 {
            if op.frozen {
                return Err(frozen(&customer));
            }
            op.load_live_grants()?;
            extra = op
                .book
                .allocate(plan.extra, op.now, Acct::Debt)
                .map_err(|e| insufficient(&customer, &format!("settle of {actual} against a hold of {}", res.hold.amount()), e))?;
        }
        let lines = settle_lines(res.hold.id, &plan, &extra);
        let returned: Vec<_> = lines.iter().filter_map(|l| if let Acct::Grant(g) = l.0 { Some(g) } else { None }).collect();
        op.load_returned_grants(&returned)?;
        op.remove_hold(&res.hold.id);
        let e = Entry { kind: Kind::Settle, at: op.now, lines, grant: None, hold: Some(res.hold.id) };
        let w = op.write_and_settle_expired(&e, Extra { metadata: Some(json!({ "actual": actual })), ..Default::default() })?;
        let consumed = settle_consumed(res.hold.id, &plan, &extra);
        op.write_res(ResRow::End { id: rid, status: "settled", settled: Some(actual), consumed: Some(consumed), end_entry: w.entry_id })?;
        op.finish()?;
        Ok((w.entry_id, w.balance_after, false))
    })
}

#[pg_extern(sql = false)]
fn release(reservation_id: Option<pgrx::Uuid>) {
    row(release_impl(None, reservation_id))
}
crate::sql_entry!(pg_finfo_billing_release, billing_release, release_wrapper, jsonb = [], one_row);

/// `billing.release(customer, reservation_id)`.
#[pg_extern(sql = false)]
fn release_for(customer: Option<&str>, reservation_id: Option<pgrx::Uuid>) {
    row(customer_arg(customer).and_then(|c| release_impl(Some(c), reservation_id)))
}
crate::sql_entry!(pg_finfo_billing_release_for, billing_release_for, release_for_wrapper, jsonb = [], one_row);

fn release_impl(customer: Option<&str>, rid: Option<pgrx::Uuid>) -> Result<(pgrx::Uuid, i64, bool)> {
    let rid = need(rid, "reservation_id")?;
    let now = clock::now();
    connect(|c| {
        let (mut op, res) = open_hold(c, customer, &rid, now)?;
        let customer = op.customer.clone();
        match res.status.as_str() {
            "released" => {
                let e = res.end_entry.unwrap_or_else(crate::pg::spi::nil);
                let b = entry_balance(&mut op, &e)?;
                return Ok((e, b, true));
            }
            "active" => {}
            other => return Err(not_active(&rid, &customer, other)),
        }
        op.catch_up()?;
        if res.expires_at <= op.now {
            return Err(not_active(&rid, &customer, "expired"));
        }
        let lines = res.hold.lines.clone();
        let returned: Vec<_> = lines.iter().filter_map(|l| if let Acct::Grant(g) = l.0 { Some(g) } else { None }).collect();
        op.load_returned_grants(&returned)?;
        op.remove_hold(&res.hold.id);
        let e = Entry { kind: Kind::Release, at: op.now, lines, grant: None, hold: Some(res.hold.id) };
        let w = op.write_and_settle_expired(&e, Extra::default())?;
        op.write_res(ResRow::End { id: rid, status: "released", settled: None, consumed: None, end_entry: w.entry_id })?;
        op.finish()?;
        Ok((w.entry_id, w.balance_after, false))
    })
}

#[pg_extern(sql = false)]
fn extend(reservation_id: Option<pgrx::Uuid>, ttl: Option<Interval>) -> Option<TimestampWithTimeZone> {
    deliver(extend_impl(None, reservation_id, ttl).map(Some), || None)
}
crate::sql_entry!(pg_finfo_billing_extend, billing_extend, extend_wrapper);

/// `billing.extend(customer, reservation_id, ttl)`.
#[pg_extern(sql = false)]
fn extend_for(customer: Option<&str>, reservation_id: Option<pgrx::Uuid>, ttl: Option<Interval>) -> Option<TimestampWithTimeZone> {
    deliver(customer_arg(customer).and_then(|c| extend_impl(Some(c), reservation_id, ttl)).map(Some), || None)
}
crate::sql_entry!(pg_finfo_billing_extend_for, billing_extend_for, extend_for_wrapper);

fn extend_impl(customer: Option<&str>, rid: Option<pgrx::Uuid>, ttl: Option<Interval>) -> Result<TimestampWithTimeZone> {
    let rid = need(rid, "reservation_id")?;
    let ttl_us = ttl_arg(ttl, "ttl")?;
    let now = clock::now();
    connect(|c| {
        let (mut op, res) = open_hold(c, customer, &rid, now)?;
        let customer = op.customer.clone();
        if res.status != "active" {
            return Err(not_active(&rid, &customer, &res.status));
        }
        op.catch_up()?;
        if res.expires_at <= op.now {
            return Err(not_active(&rid, &customer, "expired"));
        }
        let expires = res.expires_at.max(op.now.saturating_add(ttl_us));
        op.run(&RES_EXTEND, &[customer.as_str().into(), rid.into(), ts(expires).into()])?;
        op.finish()?;
        Ok(ts(expires))
    })
}

// ---- refund ----

/// The entry with id `$3`, found as `billing.entry` finds it: by the account number `$1`
/// and seq `$2` a located id names (`entry_id`; NULL for any other id), else through the
/// partial index of the other ids.
static ENTRY_ROW: Stmt = Stmt {
    sql: "SELECT j.customer, j.kind, j.accounts, j.deltas, j.reservation_id
            FROM billing.customers c JOIN billing.journal j ON j.customer = c.customer AND j.seq = $2
           WHERE c.num = $1 AND j.entry_id = $3
          UNION ALL
          SELECT j.customer, j.kind, j.accounts, j.deltas, j.reservation_id FROM billing.journal j
           WHERE j.entry_id = $3 AND j.entry_id < 'ff000000-0000-0000-0000-000000000000'::uuid",
    args: &[INT8OID, INT8OID, UUIDOID],
};
/// ENTRY_ROW within one customer's journal (the customer-qualified refund): its seq from a
/// located id, else the partial index; one shard on Citus.
static ENTRY_ROW_OF: Stmt = Stmt {
    sql: "SELECT j.customer, j.kind, j.accounts, j.deltas, j.reservation_id FROM billing.journal j
           WHERE j.customer = $1 AND j.seq = $2 AND j.entry_id = $3
          UNION ALL
          SELECT j.customer, j.kind, j.accounts, j.deltas, j.reservation_id FROM billing.journal j
           WHERE j.customer = $1 AND j.entry_id = $3 AND j.entry_id < 'ff000000-0000-0000-0000-000000000000'::uuid",
    args: &[TEXTOID, INT8OID, UUIDOID],
};
static REFUNDS_OF: Stmt = Stmt {
    sql: "SELECT accounts, deltas FROM billing.journal WHERE customer = $1 AND ref_entry = $2 AND kind = 'refund'",
    args: &[TEXTOID, UUIDOID],
};

/// An entry found by ENTRY_ROW or ENTRY_ROW_OF: (account, kind, accounts, deltas, reservation).
type FoundEntry = (String, String, Vec<pgrx::Uuid>, Vec<i64>, Option<pgrx::Uuid>);

fn entry_row(t: pgrx::spi::SpiTupleTable<'_>) -> Result<Option<FoundEntry>> {
    if t.is_empty() {
        return Ok(None);
    }
    let r = t.first();
    let accts: Vec<pgrx::Uuid> = r.get(3)?.unwrap_or_default();
    let deltas: Vec<i64> = r.get(4)?.unwrap_or_default();
    Ok(Some((r.get::<String>(1)?.unwrap_or_default(), r.get::<String>(2)?.unwrap_or_default(), accts, deltas, r.get(5)?)))
}

#[pg_extern(sql = false)]
fn refund(entry_id: Option<pgrx::Uuid>, amount: Option<i64>, idempotency_key: Option<&str>) {
    row(refund_impl(None, entry_id, amount, idempotency_key))
}
crate::sql_entry!(pg_finfo_billing_refund, billing_refund, refund_wrapper, jsonb = [], one_row);

/// `billing.refund(customer, entry_id, amount, idempotency_key)`.
#[pg_extern(sql = false)]
fn refund_for(customer: Option<&str>, entry_id: Option<pgrx::Uuid>, amount: Option<i64>, idempotency_key: Option<&str>) {
    row(customer_arg(customer).and_then(|c| refund_impl(Some(c), entry_id, amount, idempotency_key)))
}
crate::sql_entry!(pg_finfo_billing_refund_for, billing_refund_for, refund_for_wrapper, jsonb = [], one_row);

fn refund_impl(owner: Option<&str>, entry: Option<pgrx::Uuid>, amount: Option<i64>, key: Option<&str>) -> Result<(pgrx::Uuid, i64, bool)> {
    let entry = need(entry, "entry_id")?;
    let now = clock::now();
    connect(|c| {
        let (num, seq) = entry_id::locate(&id_of(&entry)).unzip();
        let found = match owner {
            Some(o) => entry_row(run(c, &ENTRY_ROW_OF, &[o.into(), seq.into(), entry.into()])?)?,
            None => entry_row(run(c, &ENTRY_ROW, &[num.into(), seq.into(), entry.into()])?)?,
        };
        // On one server a slotted customer's entry may be in one of its slot accounts.
        let found = match (found, owner) {
            (None, Some(o)) if !crate::cluster::citus() => {
                entry_row(run(c, &ENTRY_ROW, &[num.into(), seq.into(), entry.into()])?)?.filter(|r| slots::is_slot_of(&r.0, o))
            }
            (found, _) => found,
        };
        let Some((customer, kind, accts, deltas, rid)) = found else {
            return Err(BillingError::new(
                UNKNOWN,
                match owner {
                    Some(o) => format!("unknown journal entry {entry} of customer \"{o}\""),
                    None => format!("unknown journal entry {entry}"),
                },
            ));
        };
        if kind != "debit" && kind != "settle" {
            return Err(BillingError::invalid(format!(
                "entry {entry} of customer \"{customer}\" is a {kind}; only debits and settles can be refunded"
            )));
        }
        if let Some(a) = amount {
            amount_arg(Some(a), "amount", &customer)?;
        }
        // Without a key, the refund is keyed by what it asks for: retrying it is safe.
        let default_key = format!("refund:{entry}:{}", amount.map_or("all".to_string(), |a| a.to_string()));
        let key = match key {
            Some(k) => key_arg(Some(k), &customer)?,
            None => default_key.as_str(),
        };
        let mut op = Op::lock_existing(c, &customer, now)?;
        let metadata = json!({ "requested": amount });
        if let Some(k) = op.find_key(key)? {
            return if k.kind == "refund" && k.ref_entry == Some(entry) && k.metadata == metadata {
                let b = op.final_balance(&k.entry_id)?;
                Ok((k.entry_id, b, true))
            } else {
                Err(key_reused(&customer, key, &k))
            };
        }
        let consumed = if kind == "debit" {
            negate(&decode_lines(&accts, &deltas, None))
        } else {
            let rid = rid.unwrap_or_else(crate::pg::spi::nil);
            res_row(&mut op, &rid, true)?.consumed
        };
        let mut refunded = vec![];
        for r in op.run(&REFUNDS_OF, &[customer.as_str().into(), entry.into()])? {
            let a: Vec<pgrx::Uuid> = r.get(1)?.unwrap_or_default();
            let d: Vec<i64> = r.get(2)?.unwrap_or_default();
            refunded.extend(decode_lines(&a, &d, None));
        }
        let plan = refund_plan(&consumed, &refunded, amount).map_err(|left| {
            BillingError::invalid(format!(
                "refund of {} exceeds the {left} still refundable on entry {entry} of customer \"{customer}\"",
                amount.map_or("everything".to_string(), |a| a.to_string())
            ))
        })?;
        op.catch_up()?;
        let grants: Vec<_> = plan.iter().filter_map(|l| if let Acct::Grant(g) = l.0 { Some(g) } else { None }).collect();
        op.load_grants(&grants)?;
        let e = Entry { kind: Kind::Refund, at: op.now, lines: plan, grant: None, hold: None };
        let w = op.write_and_settle_expired(&e, Extra { key: Some(key), ref_entry: Some(entry), metadata: Some(metadata), ..Default::default() })?;
        op.finish()?;
        Ok((w.entry_id, w.balance_after, false))
    })
}

// ---- revocation (webhook refunds) ----

/// Takes back `amount` credits of one grant (a refunded purchase). What the customer has
/// already spent of it is owed on the overdraft account: the money is gone either way,
/// so a revocation ignores the overdraft limit. Idempotent by `key`.
pub fn revoke(customer: &str, grant_id: &pgrx::Uuid, amount: i64, key: &str, metadata: serde_json::Value) -> Result<Option<(pgrx::Uuid, i64)>> {
    let now = clock::now();
    connect(|c| {
        let mut op = Op::lock_existing(c, customer, now)?;
        if op.slots > 1 {
            // The grant's credits may sit in the slots: gather them (slot 0's lock, held
            // now, comes first in slot order), so the revocation takes what is left of the
            // grant wherever it was.
            let n = op.slots;
            drop(op);
            let mut op = slots::gather(c, customer, n, now)?;
            let r = revoke_in(&mut op, customer, grant_id, amount, key, metadata)?;
            slots::spread(op, customer, n, now)?;
            return Ok(r);
        }
        let r = revoke_in(&mut op, customer, grant_id, amount, key, metadata)?;
        op.finish()?;
        Ok(r)
    })
}

fn revoke_in(
    op: &mut Op,
    customer: &str,
    grant_id: &pgrx::Uuid,
    amount: i64,
    key: &str,
    metadata: serde_json::Value,
) -> Result<Option<(pgrx::Uuid, i64)>> {
    if let Some(k) = op.find_key(key)? {
        return if k.kind == "revocation" && k.amount == -amount { Ok(None) } else { Err(key_reused(customer, key, &k)) };
    }
    op.catch_up()?;
    let g = id_of(grant_id);
    op.load_grants(&[g])?;
    let now = op.now;
    let left = op.book.grants.iter().find(|x| x.id == g).filter(|x| x.live(now)).map_or(0, |x| x.remaining);
    let from_grant = left.min(amount);
    let mut lines = vec![(Acct::Grant(g), -from_grant), (Acct::Debt, -(amount - from_grant))];
    lines.retain(|l| l.1 != 0);
    let e = Entry { kind: Kind::Revocation, at: now, lines, grant: Some(g), hold: None };
    let w = op.write(&e, Extra { key: Some(key), metadata: Some(metadata), ..Default::default() })?;
    Ok(Some((w.entry_id, w.balance_after)))
}

// ---- slotted customers ----

#[pg_extern(sql = false)]
fn set_slots(customer: Option<&str>, slots: Option<i32>) {
    deliver(set_slots_impl(customer, slots), || ())
}
crate::sql_entry!(pg_finfo_billing_set_slots, billing_set_slots, set_slots_wrapper);

fn set_slots_impl(customer: Option<&str>, n: Option<i32>) -> Result<()> {
    let customer = customer_arg(customer)?;
    let n = need(n, "slots")?;
    connect(|c| slots::set_slots(c, customer, n, clock::now()))
}

// ---- balances ----

#[pg_extern(sql = false)]
fn balance(customer: Option<&str>) -> Option<i64> {
    deliver(balance_impl(customer).map(Some), || None)
}
crate::sql_entry!(pg_finfo_billing_balance, billing_balance, balance_wrapper);

fn balance_impl(customer: Option<&str>) -> Result<i64> {
    let customer = customer_arg(customer)?;
    let now = clock::now();
    Spi::connect_mut(|c| {
        let mut op = Op::read(c, customer, now)?;
        op.not_a_slot()?;
        let (own, n) = (op.peek_balance()?, op.slots);
        drop(op);
        Ok(if n > 1 { own.saturating_add(slots::slot_balances(c, customer, n, now)?) } else { own })
    })
}

static BALANCE_AT: Stmt = Stmt {
    sql: "SELECT balance_after, seq FROM billing.journal WHERE customer = $1 AND at <= $2 ORDER BY seq DESC LIMIT 1",
    args: &[TEXTOID, TIMESTAMPTZOID],
};

#[pg_extern(sql = false)]
fn balance_at(customer: Option<&str>, at: Option<TimestampWithTimeZone>) -> Option<i64> {
    deliver(balance_at_impl(customer, at).map(Some), || None)
}
crate::sql_entry!(pg_finfo_billing_balance_at, billing_balance_at, balance_at_wrapper);

fn balance_at_impl(customer: Option<&str>, at: Option<TimestampWithTimeZone>) -> Result<i64> {
    let customer = customer_arg(customer)?;
    let at = micros(need(at, "at")?);
    Spi::connect_mut(|c| {
        let mut op = Op::read(c, customer, at)?;
        op.not_a_slot()?;
        let n = op.slots;
        let mut total = account_balance_at(&mut op, at)?;
        drop(op);
        for k in 1..n {
            let mut op = Op::read(c, &slots::account(customer, k), at)?;
            total = total.saturating_add(account_balance_at(&mut op, at)?);
        }
        Ok(total)
    })
}

/// One account's balance as of `at`, from its journal.
fn account_balance_at(op: &mut Op, at: i64) -> Result<i64> {
    let account = op.customer.clone();
    let t = op.run(&BALANCE_AT, &[account.as_str().into(), ts(at).into()])?;
    if t.is_empty() {
        return Ok(0);
    }
    let r = t.first();
    let (b, seq) = (r.get::<i64>(1)?.unwrap_or(0), r.get::<i64>(2)?.unwrap_or(0));
    if seq < op.seq() {
        // Later entries exist, so everything that expired by `at` was written down
        // before them: the journal row is the answer.
        return Ok(b);
    }
    // `at` is after the last entry: what expired since is computed, not yet written.
    op.now = at.max(op.clock());
    op.peek_balance()
}

// ---- administration ----

static SET_OVERDRAFT: Stmt = Stmt { sql: "UPDATE billing.customers SET overdraft_limit = $2 WHERE customer = $1", args: &[TEXTOID, INT8OID] };
#[pg_extern(sql = false)]
fn set_overdraft(customer: Option<&str>, limit: Option<i64>) {
    deliver(set_overdraft_impl(customer, limit), || ())
}
crate::sql_entry!(pg_finfo_billing_set_overdraft, billing_set_overdraft, set_overdraft_wrapper);

fn set_overdraft_impl(customer: Option<&str>, limit: Option<i64>) -> Result<()> {
    let customer = customer_arg(customer)?;
    let limit = need(limit, "limit")?;
    if limit < 0 {
        return Err(BillingError::invalid(format!("overdraft limit must not be negative, got {limit} (customer \"{customer}\")")));
    }
    connect(|c| {
        let op = Op::lock_existing(c, customer, clock::now())?;
        op.not_a_slot()?;
        drop(op);
        run(c, &SET_OVERDRAFT, &[customer.into(), limit.into()])?;
        Ok(())
    })
}

static DUE: Stmt = Stmt {
    sql: "SELECT customer FROM billing.customers WHERE next_event_at <= $1
           ORDER BY next_event_at LIMIT $2",
    args: &[TIMESTAMPTZOID, INT4OID],
};

/// Writes the expiry rows of up to `batch` customers whose next expiry has passed; returns
/// the rows written. Customers locked by a running operation are skipped: that operation
/// writes them itself. (`billing.maintenance`, in `crate::maintenance`.)
pub fn write_expiries(c: &mut SpiClient<'_>, batch: i32, now: i64) -> Result<i64> {
    let mut due = vec![];
    for r in run(c, &DUE, &[ts(now).into(), batch.into()])? {
        due.push(r.get::<String>(1)?.unwrap_or_default());
    }
    let mut written = 0i64;
    for customer in due {
        if !crate::ledger::store::try_lock_customer(c, &customer)? {
            continue;
        }
        let mut op = Op::lock_existing(c, &customer, now)?;
        let before = op.seq();
        op.catch_up()?;
        written += op.seq() - before;
        op.finish()?;
    }
    Ok(written)
}
