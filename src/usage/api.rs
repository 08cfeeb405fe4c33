//! `define_meter`, `record_usage`, and the balance thresholds that feed the outbox
//! (`set_low_balance`, `set_auto_topup`, `report_topup`).
use super::rating::{rate, Carry, Price};
use crate::access::api::admitted_plan;
use crate::access::api::{check_token, save_token};
use crate::clock;
use crate::error::{deliver, BillingError, Result, KEY_REUSED, OVERFLOW, UNKNOWN};
use crate::ledger::api::{amount_arg, customer_arg, debit_item, key_arg, key_taken, need, settle_impl};
use crate::ledger::store::{lock_customer, prefetched, unknown_customer, Op};
use crate::pg::direct;
use crate::pg::spi::{micros, run, ts, Stmt};
use crate::pg::whole_row::{self, Fields};
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::BuiltinOid::*;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use serde_json::json;

static METER_ENSURE: Stmt = Stmt { sql: "INSERT INTO billing.meters (meter) VALUES ($1) ON CONFLICT DO NOTHING", args: &[TEXTOID] };
static PRICE_SET: Stmt = Stmt {
    sql: "INSERT INTO billing.meter_prices (meter, effective_from, credits, per_units) VALUES ($1, $2, $3, $4)
          ON CONFLICT (meter, effective_from) DO UPDATE SET credits = EXCLUDED.credits, per_units = EXCLUDED.per_units",
    args: &[TEXTOID, TIMESTAMPTZOID, INT8OID, INT8OID],
};

#[pg_extern(sql = false)]
fn define_meter(meter: Option<&str>, credits: Option<i64>, per_units: Option<i64>, effective_from: Option<TimestampWithTimeZone>) {
    deliver(define_meter_impl(meter, credits, per_units, effective_from), || ())
}
crate::sql_entry!(pg_finfo_billing_define_meter, billing_define_meter, define_meter_wrapper);

fn define_meter_impl(meter: Option<&str>, credits: Option<i64>, per_units: Option<i64>, from: Option<TimestampWithTimeZone>) -> Result<()> {
    let meter = need(meter, "meter")?;
    if meter.is_empty() {
        return Err(BillingError::invalid("meter name must not be empty"));
    }
    let credits = need(credits, "credits")?;
    let per = need(per_units, "per_units")?;
    if credits < 0 || per <= 0 {
        return Err(BillingError::invalid(format!("meter \"{meter}\": credits must be >= 0 and per_units > 0, got {credits} per {per}")));
    }
    let from = from.map(micros).unwrap_or_else(clock::now);
    Spi::connect_mut(|c| {
        run(c, &METER_ENSURE, &[meter.into()])?;
        run(c, &PRICE_SET, &[meter.into(), ts(from).into(), credits.into(), per.into()])?;
        Ok(())
    })
}

/// What `record_usage` reads, in one statement, once it holds the customer's lock, each
/// row whole: the customer's (1: the access answer kept on it, and what the debit opens
/// the account with; no row when the customer does not exist), the usage recorded under
/// the key (2), the meter's price in force at `$4` (3), the customer's carried fraction
/// (4) and the journal's entry under the key (5: a debit under a used key is refused or
/// replayed from it). The debit then needs no read of its own (`debit_item` with what
/// was read here). Where they can, the rows are read by their indexes instead
/// (`pg::direct`, `read_usage`).
static USAGE_READ: Stmt = Stmt {
    sql: "SELECT c, u, (SELECT m FROM billing.meter_prices m WHERE m.meter = $3 AND m.effective_from <= $4
                         ORDER BY m.effective_from DESC LIMIT 1),
                 k, jk
            FROM billing.customers c
            LEFT JOIN billing.usage_events u ON u.customer = $1 AND u.idempotency_key = $2
            LEFT JOIN billing.usage_carry k ON k.customer = $1 AND k.meter = $3
            LEFT JOIN billing.journal jk ON jk.customer = $1 AND jk.idempotency_key = $2
           WHERE c.customer = $1",
    args: &[TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID],
};
static USAGE: Fields = Fields(&["meter", "quantity", "occurred_at", "reservation_id", "credits", "entry_id"]);
static PRICE: Fields = Fields(&["credits", "per_units"]);
static CARRY: Fields = Fields(&["num", "den"]);

/// The rows USAGE_READ reads (None: the customer does not exist), as composite values.
struct UsageRead {
    customer: pg_sys::Datum,
    usage: Option<pg_sys::Datum>,
    price: Option<pg_sys::Datum>,
    carry: Option<pg_sys::Datum>,
    keyed: Option<pg_sys::Datum>,
}

fn read_usage(c: &mut SpiClient<'_>, customer: &str, key: &str, meter: &str, occurred: i64) -> Result<Option<UsageRead>> {
    if direct::usable() {
        let (id, k, m) = (direct::text(customer), direct::text(key), direct::text(meter));
        let reads: [(&direct::Index, &[pg_sys::Datum]); 5] = [
            (&direct::CUSTOMER, &[id]),
            (&direct::USAGE_KEY, &[id, k]),
            (&direct::PRICE_AT, &[m, pg_sys::Datum::from(occurred)]),
            (&direct::CARRY, &[id, m]),
            (&direct::JOURNAL_KEY, &[id, k]),
        ];
        if let Some(rows) = direct::fetch(&reads) {
            return Ok(rows[0].map(|customer| UsageRead { customer, usage: rows[1], price: rows[2], carry: rows[3], keyed: rows[4] }));
        }
    }
    let t = run(c, &USAGE_READ, &[customer.into(), key.into(), meter.into(), ts(occurred).into()])?;
    if t.is_empty() {
        return Ok(None);
    }
    // (pgrx keeps a statement's rows, which the values point into, until the connection ends.)
    let r = t.first();
    let Some(customer) = r.get_datum_by_ordinal(1)? else { return Ok(None) };
    Ok(Some(UsageRead {
        customer,
        usage: r.get_datum_by_ordinal(2)?,
        price: r.get_datum_by_ordinal(3)?,
        carry: r.get_datum_by_ordinal(4)?,
        keyed: r.get_datum_by_ordinal(5)?,
    }))
}

/// The usage row (`$1`-`$9`) and the new carry (`$10`/`$11`), in one statement. Which of the
/// three depends on what USAGE_READ read under the customer's lock: a carry row to update,
/// a carry this usage left as it was (no carry statement), or none yet. Only the last
/// upserts (under REPEATABLE READ a row another transaction made since the snapshot then
/// fails with 40001, not 23505); the upsert probed the index, locked the row (a WAL
/// record) and then updated it on every call.
macro_rules! usage_save_sql {
    ($carry:literal) => {
        concat!(
            $carry,
            " INSERT INTO billing.usage_events (customer, idempotency_key, meter, quantity, occurred_at, credits, entry_id, reservation_id, recorded_at)
              VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        )
    };
}
const USAGE_SAVE_ARGS: &[pgrx::pg_sys::PgBuiltInOids] =
    &[TEXTOID, TEXTOID, TEXTOID, INT8OID, TIMESTAMPTZOID, INT8OID, UUIDOID, UUIDOID, TIMESTAMPTZOID, INT8OID, INT8OID];
static USAGE_SAVE_UPDATE: Stmt = Stmt {
    sql: usage_save_sql!("WITH carry AS (UPDATE billing.usage_carry SET num = $10, den = $11 WHERE customer = $1 AND meter = $3)"),
    args: USAGE_SAVE_ARGS,
};
static USAGE_SAVE_UPSERT: Stmt = Stmt {
    sql: usage_save_sql!(
        "WITH carry AS (INSERT INTO billing.usage_carry (customer, meter, num, den) VALUES ($1, $3, $10, $11)
                        ON CONFLICT (customer, meter) DO UPDATE SET num = EXCLUDED.num, den = EXCLUDED.den)"
    ),
    args: USAGE_SAVE_ARGS,
};
static USAGE_SAVE_KEPT: Stmt = Stmt { sql: usage_save_sql!("WITH carry AS (SELECT $10::int8, $11::int8)"), args: USAGE_SAVE_ARGS };
static RES_OWNER: Stmt = Stmt { sql: "SELECT customer FROM billing.reservations WHERE id = $1", args: &[UUIDOID] };

pub type UsageRow = (Option<pgrx::Uuid>, i64, i64, bool);

#[pg_extern(sql = false)]
fn record_usage(
    customer: Option<&str>,
    meter: Option<&str>,
    quantity: Option<i64>,
    idempotency_key: Option<&str>,
    occurred_at: Option<TimestampWithTimeZone>,
    reservation_id: Option<pgrx::Uuid>,
) {
    // (entry_id uuid, credits bigint, balance_after bigint, replayed boolean), one row (see `one_row`)
    crate::pg::one_row::answer(record_usage_impl(customer, meter, quantity, idempotency_key, occurred_at, reservation_id))
}
crate::sql_entry!(pg_finfo_billing_record_usage, billing_record_usage, record_usage_wrapper, jsonb = [], one_row);

fn record_usage_impl(
    customer: Option<&str>,
    meter: Option<&str>,
    quantity: Option<i64>,
    key: Option<&str>,
    occurred_at: Option<TimestampWithTimeZone>,
    rid: Option<pgrx::Uuid>,
) -> Result<UsageRow> {
    let (customer, meter, quantity, key) = usage_args(customer, meter, quantity, key)?;
    record_checked(customer, meter, quantity, key, occurred_at, rid, Mode::Single)
}

/// `record_usage`'s arguments checked, as `(customer, meter, quantity, key)` (22023).
pub fn usage_args<'a>(
    customer: Option<&'a str>,
    meter: Option<&'a str>,
    quantity: Option<i64>,
    key: Option<&'a str>,
) -> Result<(&'a str, &'a str, i64, &'a str)> {
    let customer = customer_arg(customer)?;
    let meter = need(meter, "meter")?;
    let quantity = amount_arg(quantity, "quantity", customer)?;
    let key = key_arg(key, customer)?;
    Ok((customer, meter, quantity, key))
}

/// How a usage is recorded: on its own, or as a batch's item (`record_usage_many`), whose
/// debit may leave its last writes to the batch (`ledger::deferred`).
pub enum Mode<'a> {
    Single,
    Batch(Option<&'a mut crate::ledger::deferred::Deferred>),
}

/// One usage, its arguments checked. In a batch (`record_usage_many`, `Mode::Batch`) a
/// refused usage leaves nothing behind: its rate-limit token is taken only once its debit
/// went through, and the debit is the batch's (`debit_item`); every other refusal comes
/// before any write.
#[allow(clippy::too_many_arguments)]
pub fn record_checked(
    customer: &str,
    meter: &str,
    quantity: i64,
    key: &str,
    occurred_at: Option<TimestampWithTimeZone>,
    rid: Option<pgrx::Uuid>,
    mode: Mode<'_>,
) -> Result<UsageRow> {
    let now = clock::now();
    let occurred = occurred_at.map(micros).unwrap_or(now);
    Spi::connect_mut(|c| {
        // The customer's lock serialises this customer's usage: the carry and the key.
        lock_customer(c, customer)?;
        let Some(read) = read_usage(c, customer, key, meter, occurred)? else { return Err(unknown_customer(customer)) };
        if let Some(u) = whole_row::read_datum(read.usage, &USAGE)? {
            let same = u.get::<String>(0)?.as_deref() == Some(meter)
                && u.get::<i64>(1)? == Some(quantity)
                && (occurred_at.is_none() || u.get::<TimestampWithTimeZone>(2)?.map(micros) == Some(occurred))
                && u.get::<pgrx::Uuid>(3)? == rid;
            if !same {
                return Err(BillingError::new(
                    KEY_REUSED,
                    format!("idempotency key \"{key}\" of customer \"{customer}\" was already used with different usage"),
                ));
            }
            let (credits, entry) = (u.get::<i64>(4)?.unwrap_or(0), u.get::<pgrx::Uuid>(5)?);
            let mut op = Op::lock_existing(c, customer, now)?;
            let balance = match &entry {
                Some(e) => op.final_balance(e)?,
                None => op.peek_balance()?,
            };
            return Ok((entry, credits, balance, true));
        }
        // The price and the carry; the customer's row is taken apart below, when it is needed.
        let price = whole_row::read_datum(read.price, &PRICE)?;
        let priced = price.is_some();
        let price = match price {
            Some(p) => Price { credits: p.get::<i64>(0)?.unwrap_or(0), per_units: p.get::<i64>(1)?.unwrap_or(1) },
            None => Price { credits: 0, per_units: 1 },
        };
        let stored = match whole_row::read_datum(read.carry, &CARRY)? {
            Some(k) => match (k.get::<i64>(0)?, k.get::<i64>(1)?) {
                (Some(num), Some(den)) => Some(Carry { num, den }),
                _ => None,
            },
            None => None,
        };
        let carry = stored.unwrap_or_default();
        let rated = priced.then(|| rate(carry, price, quantity));
        // The account and the journal's entry under the key, as the debit's own read would
        // find them (nothing is written to the customer before the debit).
        let (opened, keyed) = prefetched(read.customer, read.keyed)?;
        // A debit refuses a used key itself; what writes no debit refuses it here.
        let debits = rid.is_none() && matches!(rated, Some(Some((credits, _))) if credits > 0);
        if !debits && keyed.is_some() {
            return Err(key_taken(customer, key));
        }
        // Access as for any request, then one token from the most specific limit on the
        // meter (the customer's or its plan's, the meter's or every feature's), taken once
        // the usage is charged.
        let token = match rid {
            None => {
                let plan = admitted_plan(c, customer, now, read.customer)?;
                check_token(c, customer, plan.as_deref(), meter, now)?
            }
            Some(_) => None,
        };
        let Some(rated) = rated else {
            return Err(BillingError::new(
                UNKNOWN,
                format!("unknown meter \"{meter}\", or no price in force at the usage's time (customer \"{customer}\")"),
            ));
        };
        let (credits, next) = rated.ok_or_else(|| {
            BillingError::new(OVERFLOW, format!("usage of {quantity} on meter \"{meter}\" is out of range (customer \"{customer}\")"))
        })?;
        let metadata = pgrx::JsonB(json!({ "meter": meter, "quantity": quantity }));
        let (entry, balance) = match rid {
            Some(r) => {
                let owner = run(c, &RES_OWNER, &[r.into()])?;
                if owner.is_empty() || owner.first().get::<String>(1)?.as_deref() != Some(customer) {
                    return Err(BillingError::new(UNKNOWN, format!("unknown reservation {r} of customer \"{customer}\"")));
                }
                let (e, b, _) = settle_impl(Some(customer), Some(r), Some(credits))?;
                (Some(e), b)
            }
            None if credits > 0 => {
                let later = match mode {
                    Mode::Batch(later) => later,
                    Mode::Single => None,
                };
                let (e, b, _) = debit_item(customer, credits, key, &metadata.0, true, Some((opened, keyed)), later)?;
                (Some(e), b)
            }
            None => (None, Op::read(c, customer, now)?.peek_balance()?),
        };
        if let Some(t) = token {
            save_token(c, customer, t)?;
        }
        let save = match stored {
            Some(old) if old == next => &USAGE_SAVE_KEPT,
            Some(_) => &USAGE_SAVE_UPDATE,
            None => &USAGE_SAVE_UPSERT,
        };
        run(
            c,
            save,
            &[
                customer.into(),
                key.into(),
                meter.into(),
                quantity.into(),
                ts(occurred).into(),
                credits.into(),
                entry.map_or_else(DatumWithOid::null::<pgrx::Uuid>, |e| e.into()),
                rid.map_or_else(DatumWithOid::null::<pgrx::Uuid>, |e| e.into()),
                ts(now).into(),
                next.num.into(),
                next.den.into(),
            ],
        )?;
        Ok((entry, credits, balance, false))
    })
}

// ---- thresholds ----

static SET_LOW: Stmt = Stmt {
    sql: "UPDATE billing.customers SET low_balance = $2, low_notified = coalesce(balance < $2, false) WHERE customer = $1",
    args: &[TEXTOID, INT8OID],
};

#[pg_extern(sql = false)]
fn set_low_balance(customer: Option<&str>, threshold: Option<i64>) {
    deliver(set_low_impl(customer, threshold), || ())
}
crate::sql_entry!(pg_finfo_billing_set_low_balance, billing_set_low_balance, set_low_balance_wrapper);

fn set_low_impl(customer: Option<&str>, threshold: Option<i64>) -> Result<()> {
    let customer = customer_arg(customer)?;
    Spi::connect_mut(|c| {
        drop(Op::lock_existing(c, customer, clock::now())?);
        run(c, &SET_LOW, &[customer.into(), threshold.map_or_else(DatumWithOid::null::<i64>, |t| t.into())])?;
        Ok(())
    })
}

static TOPUP_SET: Stmt = Stmt {
    sql: "INSERT INTO billing.auto_topups AS a (customer, threshold, amount, monthly_cap, max_failures) VALUES ($1, $2, $3, $4, $5)
          ON CONFLICT (customer) DO UPDATE SET threshold = EXCLUDED.threshold, amount = EXCLUDED.amount,
              monthly_cap = EXCLUDED.monthly_cap, max_failures = EXCLUDED.max_failures, failures = 0",
    args: &[TEXTOID, INT8OID, INT8OID, INT4OID, INT4OID],
};
static TOPUP_ARM: Stmt = Stmt {
    sql: "UPDATE billing.customers SET topup_below = $2, topup_notified = coalesce(balance < $2, false) WHERE customer = $1",
    args: &[TEXTOID, INT8OID],
};
static TOPUP_OFF: Stmt = Stmt { sql: "DELETE FROM billing.auto_topups WHERE customer = $1", args: &[TEXTOID] };

#[pg_extern(sql = false)]
fn set_auto_topup(customer: Option<&str>, threshold: Option<i64>, amount: Option<i64>, monthly_cap: Option<i32>, max_failures: Option<i32>) {
    deliver(set_auto_topup_impl(customer, threshold, amount, monthly_cap, max_failures), || ())
}
crate::sql_entry!(pg_finfo_billing_set_auto_topup, billing_set_auto_topup, set_auto_topup_wrapper);

fn set_auto_topup_impl(
    customer: Option<&str>,
    threshold: Option<i64>,
    amount: Option<i64>,
    cap: Option<i32>,
    max_failures: Option<i32>,
) -> Result<()> {
    let customer = customer_arg(customer)?;
    Spi::connect_mut(|c| {
        drop(Op::lock_existing(c, customer, clock::now())?);
        let Some(threshold) = threshold else {
            run(c, &TOPUP_OFF, &[customer.into()])?;
            run(c, &TOPUP_ARM, &[customer.into(), DatumWithOid::null::<i64>()])?;
            return Ok(());
        };
        let amount = amount_arg(amount, "amount", customer)?;
        let cap = need(cap, "monthly_cap")?;
        let max_failures = need(max_failures, "max_failures")?;
        if cap < 0 || max_failures < 0 {
            return Err(BillingError::invalid(format!("monthly_cap and max_failures must not be negative (customer \"{customer}\")")));
        }
        run(c, &TOPUP_SET, &[customer.into(), threshold.into(), amount.into(), cap.into(), max_failures.into()])?;
        run(c, &TOPUP_ARM, &[customer.into(), threshold.into()])?;
        Ok(())
    })
}

static TOPUP_REPORT: Stmt = Stmt {
    sql: "UPDATE billing.auto_topups SET failures = CASE WHEN $3 THEN 0 ELSE failures + 1 END
           WHERE customer = $1 RETURNING failures",
    args: &[TEXTOID, TEXTOID, BOOLOID],
};

#[pg_extern(sql = false)]
fn report_topup(customer: Option<&str>, idempotency_key: Option<&str>, succeeded: Option<bool>) {
    deliver(report_topup_impl(customer, idempotency_key, succeeded), || ())
}
crate::sql_entry!(pg_finfo_billing_report_topup, billing_report_topup, report_topup_wrapper);

/// A failed top-up asks again at once (a new `topup_due` with the next key) until the
/// policy's `max_failures` or `monthly_cap`; a success clears the failures.
fn report_topup_impl(customer: Option<&str>, key: Option<&str>, succeeded: Option<bool>) -> Result<()> {
    let customer = customer_arg(customer)?;
    let _key = key_arg(key, customer)?;
    let ok = need(succeeded, "succeeded")?;
    let now = clock::now();
    Spi::connect_mut(|c| {
        drop(Op::lock_existing(c, customer, now)?);
        let t = run(c, &TOPUP_REPORT, &[customer.into(), _key.into(), ok.into()])?;
        if t.is_empty() {
            return Err(BillingError::new(UNKNOWN, format!("customer \"{customer}\" has no auto top-up policy")));
        }
        if !ok {
            crate::ledger::store::emit_topup(c, customer, now)?;
        }
        Ok(())
    })
}
