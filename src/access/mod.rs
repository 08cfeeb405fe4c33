//! Access checks (SPEC section 3): the pure decision and its SQL functions.
pub mod api;
pub mod decide;
pub mod freeze;
pub mod outbox;
mod tests;
