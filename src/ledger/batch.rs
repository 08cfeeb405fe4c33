//! `billing.debit_many` (SPEC section 1): a batch of debits, as an AI gateway flushes
//! them. One statement reads every customer of the batch (and its slot count), the
//! customers are locked in one order (`store::lock_many`), one statement reads each
//! one's row and the entry under its first item's key, then each item runs the single
//! debit's Rust path (`api::debit_item`) in array order, under locks already held, and
//! one statement writes what the items wrote (`deferred`). A refused item answers its
//! SQLSTATE and message in its row; the others go on.
use super::api::{amount_arg, customer_arg, debit_item, key_arg, need};
use super::deferred::Deferred;
use super::store::{lock_many, prefetch_spend};
use crate::batch::{self, aborts_batch, check_lengths, outcome};
use crate::error::{deliver, Result};
use crate::pg::spi::{run, Stmt};
use pgrx::pg_sys::BuiltinOid::*;
use pgrx::prelude::*;
use serde_json::json;
use std::collections::HashMap;

/// The slot count of each of the batch's customers that is slotted, in one statement (by
/// the index of slotted customers: one probe of a mostly empty index per customer).
static SLOTS_OF: Stmt = Stmt { sql: "SELECT customer, slots FROM billing.customers WHERE customer = ANY($1) AND slots > 1", args: &[TEXTARRAYOID] };

/// Locks the batch's distinct customers (those of the items whose arguments passed) in
/// the one order of `batch::lock_order`, slot accounts included, before any item is
/// applied. An unknown customer is locked too (its items answer BL003), so a customer
/// made meanwhile is still taken in order.
/// Returns the slot count of each slotted customer (the others have one account).
pub fn lock_batch(customers: &[&str]) -> Result<HashMap<String, i32>> {
    let mut distinct: Vec<&str> = customers.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    Spi::connect_mut(|c| {
        let mut slots = HashMap::new();
        for r in run(c, &SLOTS_OF, &[distinct.clone().into()])? {
            slots.insert(r.get::<String>(1)?.unwrap_or_default(), r.get::<i32>(2)?.unwrap_or(1));
        }
        let with_slots: Vec<(&str, i32)> = distinct.iter().map(|c| (*c, slots.get(*c).copied().unwrap_or(1))).collect();
        lock_many(c, &with_slots)?;
        Ok::<_, crate::error::BillingError>(slots)
    })
}

// (pgrx reads the row's column names from the `name!`s written out in the signature)
#[allow(clippy::type_complexity)]
#[pg_extern(sql = false)]
fn debit_many(
    customers: Option<Vec<Option<String>>>,
    amounts: Option<Vec<Option<i64>>>,
    idempotency_keys: Option<Vec<Option<String>>>,
) -> TableIterator<
    'static,
    (
        name!(i, i32),
        name!(entry_id, Option<pgrx::Uuid>),
        name!(balance_after, Option<i64>),
        name!(replayed, Option<bool>),
        name!(sqlstate, Option<String>),
        name!(message, Option<String>),
    ),
> {
    deliver(debit_many_impl(customers, amounts, idempotency_keys).map(TableIterator::new), TableIterator::empty)
}
crate::sql_entry!(pg_finfo_billing_debit_many, billing_debit_many, debit_many_wrapper, set_rows);

/// A row of `debit_many`.
type Row = (i32, Option<pgrx::Uuid>, Option<i64>, Option<bool>, Option<String>, Option<String>);

fn debit_many_impl(customers: Option<Vec<Option<String>>>, amounts: Option<Vec<Option<i64>>>, keys: Option<Vec<Option<String>>>) -> Result<Vec<Row>> {
    let customers = need(customers, "customers")?;
    let amounts = need(amounts, "amounts")?;
    let keys = need(keys, "idempotency_keys")?;
    let n = check_lengths(&[("customers", customers.len()), ("amounts", amounts.len()), ("idempotency_keys", keys.len())])?;
    // Each item's arguments, checked as the single debit checks them (22023 in its row).
    let args: Vec<Result<(&str, i64, &str)>> = (0..n)
        .map(|j| {
            let c = customer_arg(customers[j].as_deref())?;
            Ok((c, amount_arg(amounts[j], "amount", c)?, key_arg(keys[j].as_deref(), c)?))
        })
        .collect();
    let to_lock: Vec<&str> = args.iter().filter_map(|a| a.as_ref().ok().map(|a| a.0)).collect();
    let slots = lock_batch(&to_lock)?;
    // Each unslotted customer's first item is opened from one read of them all (after the
    // locks, so it stays true until that item writes); the later ones read for themselves.
    let firsts = batch::first_of_each(args.iter().map(|a| a.as_ref().ok().map(|a| a.0).filter(|c| !slots.contains_key(*c))));
    let pairs: Vec<(&str, &str)> = firsts.iter().map(|&j| args[j].as_ref().map(|a| (a.0, a.2)).unwrap_or_default()).collect();
    let mut pre = Spi::connect_mut(|c| prefetch_spend(c, &pairs))?.into_iter();
    let mut pre_of: Vec<Option<_>> = (0..n).map(|_| None).collect();
    for &j in &firsts {
        pre_of[j] = pre.next().flatten();
    }
    let metadata = json!({});
    // The unslotted accounts' last writes, written together (on Citus, where the accounts
    // are on many shards, each item writes its own).
    let mut later = (!crate::cluster::citus()).then(Deferred::default);
    let mut rows = Vec::with_capacity(n);
    for ((j, a), p) in args.into_iter().enumerate().zip(pre_of) {
        let r = a.and_then(|(c, amount, key)| {
            let later = later.as_mut().filter(|_| !slots.contains_key(c));
            match later {
                // A customer's second item reads what its first wrote.
                Some(l) if l.holds(c) => {
                    Spi::connect_mut(|s| l.write(s))?;
                    debit_item(c, amount, key, &metadata, false, p, Some(l))
                }
                l => debit_item(c, amount, key, &metadata, false, p, l),
            }
        });
        if let Err(e) = &r {
            if aborts_batch(e) {
                return Err(e.clone());
            }
        }
        let (v, sqlstate, message) = outcome(r);
        rows.push((j as i32 + 1, v.map(|v| v.0), v.map(|v| v.1), v.map(|v| v.2), sqlstate, message));
    }
    if let Some(l) = later.as_mut() {
        Spi::connect_mut(|s| l.write(s))?;
    }
    Ok(rows)
}
