//! The ledger's notion of "now": the wall clock (`clock_timestamp()`), not the start of
//! the transaction, so an expiry takes effect at its instant even inside a long
//! transaction.
//!
//! Tests move time with `billing.clock`, a superuser-only setting that holds for one
//! transaction only: `BEGIN; SET LOCAL billing.clock = '...'; ...; COMMIT`. A session-level
//! value would outlive its transaction, and behind a transaction-mode pooler it would stay
//! on a pooled server connection: the next client would read balances as of that instant
//! and write rows dated then, which later operations follow (a customer's time never goes
//! back). So a value is refused outside a transaction block and from any source but the
//! session (postgresql.conf, `ALTER ROLE/DATABASE ... SET`, connection options), and a
//! plain `SET` inside a block is reset when the block commits (or prepares): whichever
//! form set it, it is gone once the transaction ends. Empty means the real clock.
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::{c_char, c_void, CStr, CString};

pub static CLOCK: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

pub fn register() {
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"billing.clock",
            c"Overrides the time the billing ledger uses, for one transaction (tests only).",
            c"Empty: the wall clock. A timestamptz, set with SET LOCAL inside a transaction block: every billing function of that transaction takes that instant as now.",
            &CLOCK,
            GucContext::Suset,
            GucFlags::default(),
            Some(check_clock),
            None,
            None,
        );
        pg_sys::RegisterXactCallback(Some(end_of_transaction), std::ptr::null_mut());
    }
}

fn is_set() -> bool {
    CLOCK.get().is_some_and(|s| !s.as_bytes().is_empty())
}

#[pg_guard]
unsafe extern "C-unwind" fn check_clock(newval: *mut *mut c_char, _extra: *mut *mut c_void, source: pg_sys::GucSource::Type) -> bool {
    let v = unsafe { *newval };
    // (A parallel worker takes its leader's settings before its transaction starts.)
    if v.is_null() || unsafe { CStr::from_ptr(v) }.to_bytes().is_empty() || unsafe { pg_sys::ParallelWorkerNumber } >= 0 {
        return true;
    }
    let why = if source != pg_sys::GucSource::PGC_S_SESSION {
        c"billing.clock can only be set by SET LOCAL in a transaction (not in a configuration file, ALTER ROLE/DATABASE or connection options)"
    } else if !unsafe { pg_sys::IsTransactionBlock() } {
        c"billing.clock holds for one transaction only: set it inside a transaction block"
    } else {
        return true;
    };
    unsafe {
        pg_sys::GUC_check_errcode(PgSqlErrorCode::ERRCODE_INVALID_TRANSACTION_STATE as i32);
        pg_sys::GUC_check_errmsg_string = pg_sys::pstrdup(why.as_ptr());
        pg_sys::GUC_check_errhint_string = pg_sys::pstrdup(c"BEGIN; SET LOCAL billing.clock = '...'; ... COMMIT;".as_ptr());
    }
    false
}

/// Resets a value a plain `SET` left for the session: the transaction that set it ends.
#[pg_guard]
unsafe extern "C-unwind" fn end_of_transaction(event: pg_sys::XactEvent::Type, _arg: *mut c_void) {
    use pg_sys::XactEvent::*;
    if (event == XACT_EVENT_PRE_COMMIT || event == XACT_EVENT_PRE_PREPARE) && is_set() {
        unsafe { pg_sys::SetConfigOption(c"billing.clock".as_ptr(), c"".as_ptr(), pg_sys::GucContext::PGC_SUSET, pg_sys::GucSource::PGC_S_SESSION) };
    }
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

/// Billing's now as SQL sees it (`verify()` compares the journal with it): the test clock
/// of this transaction, else the wall clock.
#[pg_extern(sql = false)]
fn clock_now() -> TimestampWithTimeZone {
    crate::pg::spi::ts(now())
}
crate::sql_entry!(pg_finfo_billing_clock_now, billing_clock_now, clock_now_wrapper);
