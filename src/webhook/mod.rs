//! Webhook ingestion: signature schemes and event parsing (pure), applying Stripe events,
//! and the SQL functions that tie them together.
pub mod allowance;
pub mod apply;
pub mod event;
pub mod ingest;
mod plan_tests;
pub mod secret;
#[cfg(any(test, feature = "pg_test"))]
mod secret_tests;
pub mod signature;
pub mod sparse;
mod tests;
