//! Webhook ingestion. For now: the providers' signature schemes (pure logic).
pub mod signature;
