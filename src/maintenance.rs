//! `billing.maintenance()`, for pg_cron: what time alone changes, written down. The
//! ledger's expiry rows (expired grants and holds already stopped counting: this only
//! writes their journal rows), then the access that a grace period or a trial running
//! out changed, for the outbox.
use crate::error::{deliver, BillingError, Result};
use pgrx::prelude::*;

#[pg_extern(sql = false)]
fn maintenance(batch: Option<i32>) -> Option<i64> {
    deliver(maintenance_impl(batch).map(Some), || None)
}
crate::sql_entry!(pg_finfo_billing_maintenance, billing_maintenance, maintenance_wrapper);

/// Returns the expiry rows written.
fn maintenance_impl(batch: Option<i32>) -> Result<i64> {
    let batch = batch.unwrap_or(10_000);
    if batch <= 0 {
        return Err(BillingError::invalid("batch must be positive"));
    }
    let now = crate::clock::now();
    Spi::connect_mut(|c| {
        let written = crate::ledger::api::write_expiries(c, batch, now)?;
        crate::access::api::note_all(c, now)?;
        Ok(written)
    })
}
