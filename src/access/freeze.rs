//! `billing.set_frozen`: an operator's freeze (as an open dispute's, in `webhook::apply`).
//! Frozen customers are refused debits (BL004) and access; the change reaches the outbox.
use crate::clock;
use crate::error::{deliver, Result};
use crate::ledger::api::{customer_arg, need};
use crate::ledger::slots;
use crate::ledger::store::Op;
use crate::pg::spi::{run, Stmt};
use pgrx::pg_sys::BuiltinOid::*;
use pgrx::prelude::*;

static SET_FROZEN: Stmt = Stmt { sql: "UPDATE billing.customers SET frozen = $2 WHERE customer = ANY($1)", args: &[TEXTARRAYOID, BOOLOID] };

#[pg_extern(sql = false)]
fn set_frozen(customer: Option<&str>, frozen: Option<bool>) {
    deliver(set_frozen_impl(customer, frozen), || ())
}
crate::sql_entry!(pg_finfo_billing_set_frozen, billing_set_frozen, set_frozen_wrapper);

fn set_frozen_impl(customer: Option<&str>, frozen: Option<bool>) -> Result<()> {
    let customer = customer_arg(customer)?;
    let frozen = need(frozen, "frozen")?;
    Spi::connect_mut(|c| {
        let now = clock::now();
        let op = Op::lock_existing(c, customer, now)?;
        op.not_a_slot()?;
        let n = op.slots;
        drop(op);
        // A slotted customer's accounts freeze together, under all their locks.
        let accounts = slots::lock_slots(customer, n);
        run(c, &SET_FROZEN, &[accounts.into(), frozen.into()])?;
        super::api::note_access(c, customer, now)
    })
}
