//! The credit ledger: grants, debits, holds, refunds, expiry, and the journal.
pub mod api;
pub mod entry_id;
pub mod rules;
pub mod slots;
pub mod store;
mod entry_id_tests;
mod head_tests;
mod slot_tests;
mod tests;
