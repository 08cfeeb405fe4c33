//! Webhook ingestion: signature schemes and event parsing (pure), applying Stripe events,
//! and the SQL functions that tie them together.
pub mod apply;
pub mod event;
pub mod ingest;
pub mod signature;
mod tests;
