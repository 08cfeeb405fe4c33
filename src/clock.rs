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
//! form set it, it is gone once the transaction ends. Before a backend has loaded the
//! library no check runs (the setting is a placeholder): a value set then in a transaction
//! that has ended is discarded, with a warning, when the library loads. Empty means the
//! real clock.
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::{c_char, c_void, CStr, CString};

pub static CLOCK: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

thread_local! {
    /// While the library loads: `billing.clock` had a value from a transaction that has
    /// ended (a placeholder, set before this backend loaded billing), which must not be
    /// taken now.
    static STALE_PLACEHOLDER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

pub fn register() {
    unsafe {
        STALE_PLACEHOLDER.set(placeholder_from_an_ended_transaction());
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
        STALE_PLACEHOLDER.set(false);
        pg_sys::RegisterXactCallback(Some(end_of_transaction), std::ptr::null_mut());
    }
}

/// Before the library is loaded in a backend, `SET billing.clock` makes a placeholder
/// that no check sees. A placeholder set in this transaction has a stack entry (it is
/// undone at its end); one without came from a transaction that has ended: on a pooled
/// server connection, another client's.
unsafe fn placeholder_from_an_ended_transaction() -> bool {
    let g = unsafe { find_clock() };
    if g.is_null() || unsafe { (*g).flags } as u32 & pg_sys::GUC_CUSTOM_PLACEHOLDER == 0 {
        return false;
    }
    let v = unsafe { *(*(g as *mut pg_sys::config_string)).variable };
    !v.is_null() && unsafe { *v } != 0 && unsafe { (*g).stack }.is_null()
}

#[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15"))]
unsafe fn find_clock() -> *mut pg_sys::config_generic {
    // (find_option is static before 16)
    unsafe {
        let vars = pg_sys::get_guc_variables();
        for i in 0..pg_sys::GetNumConfigOptions() as usize {
            let g = *vars.add(i);
            if CStr::from_ptr((*g).name) == c"billing.clock" {
                return g;
            }
        }
    }
    std::ptr::null_mut()
}

#[cfg(not(any(feature = "pg13", feature = "pg14", feature = "pg15")))]
unsafe fn find_clock() -> *mut pg_sys::config_generic {
    unsafe { pg_sys::find_option(c"billing.clock".as_ptr(), false, true, pg_sys::DEBUG1 as i32) }
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
    let why = if STALE_PLACEHOLDER.get() {
        c"billing.clock was set in a transaction that has ended, before this session loaded billing: discarded"
    } else if source != pg_sys::GucSource::PGC_S_SESSION {
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
