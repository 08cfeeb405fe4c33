//! `billing._check_secret(endpoint, provider, secret)`: `billing.add_secret`'s check of a new
//! secret (sql/webhooks.sql). The rule is [`signature::check_secret`], the same one the
//! verifier skips stored secrets by, so what add_secret accepts is exactly what can verify.
use super::signature::{self, Provider};
use crate::error::{deliver, BillingError, Result};
use crate::ledger::api::need;
use pgrx::prelude::*;

/// Raises 22023, naming the endpoint and never quoting the secret, unless `secret` can verify
/// deliveries for `provider`.
#[pg_extern(sql = false)]
fn check_secret(endpoint: Option<&str>, provider: Option<&str>, secret: Option<&str>) {
    deliver(check_secret_impl(endpoint, provider, secret), || ())
}
crate::sql_entry!(pg_finfo_billing_check_secret, billing_check_secret, check_secret_wrapper);

fn check_secret_impl(endpoint: Option<&str>, provider: Option<&str>, secret: Option<&str>) -> Result<()> {
    let endpoint = need(endpoint, "endpoint name")?;
    let p = need(provider, "provider")?;
    let provider = Provider::parse(p).ok_or_else(|| BillingError::invalid(format!("unknown webhook provider {p:?} (stripe or standard)")))?;
    let secret = need(secret, "secret")?;
    signature::check_secret(provider, secret)
        .map_err(|problem| BillingError::invalid(format!("secret for webhook endpoint \"{endpoint}\" refused: it {problem}")))
}
