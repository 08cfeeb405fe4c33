//! The credit ledger: grants, debits, holds, refunds, expiry, and the journal.
pub mod api;
pub mod batch;
mod batch_tests;
pub mod deferred;
pub mod entry_id;
mod entry_id_tests;
mod head_tests;
pub mod rules;
mod slot_tests;
pub mod slots;
pub mod store;
mod tests;
