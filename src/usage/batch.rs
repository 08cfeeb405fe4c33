//! `billing.record_usage_many` (SPEC section 4): a batch of usages, as an AI gateway
//! flushes them. The customers are locked first, in one order (`ledger::batch::lock_batch`),
//! then each item runs `record_usage`'s Rust path (`api::record_checked`, in its batch
//! mode) in array order, its debit's last writes left to one statement for the batch
//! (`ledger::deferred`). A refused item answers its SQLSTATE and message in its row.
use super::api::{record_checked, usage_args, Mode};
use crate::batch::{aborts_batch, check_lengths, outcome};
use crate::error::{deliver, Result};
use crate::ledger::api::need;
use crate::ledger::batch::lock_batch;
use crate::ledger::deferred::Deferred;
use pgrx::prelude::*;

// (pgrx reads the row's column names from the `name!`s written out in the signature)
#[allow(clippy::type_complexity)]
#[pg_extern(sql = false)]
fn record_usage_many(
    customers: Option<Vec<Option<String>>>,
    meters: Option<Vec<Option<String>>>,
    quantities: Option<Vec<Option<i64>>>,
    idempotency_keys: Option<Vec<Option<String>>>,
    occurred_at: Option<Vec<Option<TimestampWithTimeZone>>>,
) -> TableIterator<
    'static,
    (
        name!(i, i32),
        name!(entry_id, Option<pgrx::Uuid>),
        name!(credits, Option<i64>),
        name!(balance_after, Option<i64>),
        name!(replayed, Option<bool>),
        name!(sqlstate, Option<String>),
        name!(message, Option<String>),
    ),
> {
    deliver(record_usage_many_impl(customers, meters, quantities, idempotency_keys, occurred_at).map(TableIterator::new), TableIterator::empty)
}
crate::sql_entry!(pg_finfo_billing_record_usage_many, billing_record_usage_many, record_usage_many_wrapper, set_rows);

type Row = (i32, Option<pgrx::Uuid>, Option<i64>, Option<i64>, Option<bool>, Option<String>, Option<String>);

fn record_usage_many_impl(
    customers: Option<Vec<Option<String>>>,
    meters: Option<Vec<Option<String>>>,
    quantities: Option<Vec<Option<i64>>>,
    keys: Option<Vec<Option<String>>>,
    occurred_at: Option<Vec<Option<TimestampWithTimeZone>>>,
) -> Result<Vec<Row>> {
    let customers = need(customers, "customers")?;
    let meters = need(meters, "meters")?;
    let quantities = need(quantities, "quantities")?;
    let keys = need(keys, "idempotency_keys")?;
    let mut lengths =
        vec![("customers", customers.len()), ("meters", meters.len()), ("quantities", quantities.len()), ("idempotency_keys", keys.len())];
    if let Some(o) = &occurred_at {
        lengths.push(("occurred_at", o.len()));
    }
    let n = check_lengths(&lengths)?;
    // Each item's arguments, checked as the single call checks them (22023 in its row).
    let args: Vec<Result<(&str, &str, i64, &str)>> =
        (0..n).map(|j| usage_args(customers[j].as_deref(), meters[j].as_deref(), quantities[j], keys[j].as_deref())).collect();
    let to_lock: Vec<&str> = args.iter().filter_map(|a| a.as_ref().ok().map(|a| a.0)).collect();
    let slots = lock_batch(&to_lock)?;
    // The unslotted customers' debits leave their last writes to the batch, written
    // together (as `debit_many`'s; not on Citus).
    let mut later = (!crate::cluster::citus()).then(Deferred::default);
    let mut rows = Vec::with_capacity(n);
    for (j, a) in args.into_iter().enumerate() {
        let at = occurred_at.as_ref().and_then(|o| o[j]);
        let r = a.and_then(|(c, meter, quantity, key)| {
            let later = later.as_mut().filter(|_| !slots.contains_key(c));
            match later {
                // A customer's second item reads what its first wrote.
                Some(l) if l.holds(c) => {
                    Spi::connect_mut(|s| l.write(s))?;
                    record_checked(c, meter, quantity, key, at, None, Mode::Batch(Some(l)))
                }
                l => record_checked(c, meter, quantity, key, at, None, Mode::Batch(l)),
            }
        });
        if let Err(e) = &r {
            if aborts_batch(e) {
                return Err(e.clone());
            }
        }
        let (v, sqlstate, message) = outcome(r);
        rows.push((j as i32 + 1, v.and_then(|v| v.0), v.map(|v| v.1), v.map(|v| v.2), v.map(|v| v.3), sqlstate, message));
    }
    if let Some(l) = later.as_mut() {
        Spi::connect_mut(|s| l.write(s))?;
    }
    Ok(rows)
}
