//! Usage metering and rate limits (SPEC section 4): exact rating and token buckets as
//! pure functions, and their SQL functions.
pub mod api;
pub mod batch;
mod batch_tests;
pub mod bucket;
pub mod rating;
