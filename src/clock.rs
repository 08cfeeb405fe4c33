//! The ledger's notion of "now": the wall clock (`clock_timestamp()`), not the start of
//! the transaction, so an expiry takes effect at its instant even inside a long
//! transaction. Tests move time with `SET billing.clock = '...'`, a superuser-only
//! setting; empty means the real clock.
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::CString;

pub static CLOCK: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

pub fn register() {
    GucRegistry::define_string_guc(
        c"billing.clock",
        c"Overrides the time the billing ledger uses (tests only).",
        c"Empty: the wall clock. A timestamptz: every billing function takes that instant as now.",
        &CLOCK,
        GucContext::Suset,
        GucFlags::default(),
    );
}

pub fn now() -> i64 {
    match CLOCK.get() {
        Some(s) if !s.as_bytes().is_empty() => unsafe {
            let t: TimestampWithTimeZone = pgrx::fcinfo::direct_function_call(
                pg_sys::timestamptz_in,
                &[Some(pg_sys::Datum::from(s.as_ptr())), Some(pg_sys::Datum::from(pg_sys::InvalidOid)), Some(pg_sys::Datum::from(-1i32))],
            )
            .unwrap_or_else(TimestampWithTimeZone::positive_infinity);
            pg_sys::TimestampTz::from(t)
        },
        _ => unsafe { pg_sys::GetCurrentTimestamp() },
    }
}
