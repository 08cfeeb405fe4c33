//! The credit ledger: grants, debits, holds, refunds, expiry, and the journal.
pub mod api;
pub mod rules;
pub mod slots;
pub mod store;
mod slot_tests;
mod tests;
