//! Functions declared `RETURNS TABLE` that always answer one row (`debit`, `settle`,
//! `ingest`, ...), handed back in materialize mode without pgrx's set machinery.
//!
//! pgrx's `TableIterator` speaks value-per-call: Postgres called the function once for
//! the row and once more to hear that there was no other, each time through
//! `fmgr_security_definer` (which installs and removes the `SET` clauses), and the first
//! call made a multi-call memory context and built the row type from `pg_proc` with
//! `get_call_result_type`. Together about 21,000 instructions a debit (callgrind,
//! `bench/README.md`).
//!
//! Instead, the Rust function hands its row to [`answer`] and returns nothing; the entry
//! point ([`finish`], through `sql_entry!`) puts the row in a tuplestore described by
//! the row type the executor expects, and tells it the set is complete: one call per row,
//! no row type built per call.
use crate::error::{deliver, Result};
use pgrx::pg_sys::{self, Datum};
use pgrx::IntoDatum;
use std::cell::RefCell;

thread_local! {
    /// The row of the call in progress, between `answer` and `finish`.
    static ROW: RefCell<Option<Vec<Option<Datum>>>> = const { RefCell::new(None) };
}

/// A one-row function's row: its columns in the declared order.
pub trait Row {
    fn datums(self) -> Vec<Option<Datum>>;
}

macro_rules! impl_row {
    ($($t:ident),+) => {
        impl<$($t: IntoDatum),+> Row for ($($t,)+) {
            #[allow(non_snake_case)]
            fn datums(self) -> Vec<Option<Datum>> {
                let ($($t,)+) = self;
                vec![$($t.into_datum()),+]
            }
        }
    };
}
impl_row!(A, B, C);
impl_row!(A, B, C, D);
impl_row!(A, B, C, D, E, F);

/// The answer of a one-row function: its row, or its error (raised by the entry point,
/// see `error::deliver`). Pass-by-reference values are made in the calling memory
/// context, which outlives the call's return to `finish`.
pub fn answer<T: Row>(r: Result<T>) {
    if let Some(row) = deliver(r.map(Some), || None) {
        ROW.with(|x| *x.borrow_mut() = Some(row.datums()));
    }
}

/// Forgets a row left by a call that errored out after answering. Called at every entry.
pub fn clear() {
    ROW.with(|x| x.borrow_mut().take());
}

/// Returns the row `answer` left, materialized.
///
/// # Safety
/// `fcinfo` is the call's own, of a function declared to return a row type.
pub unsafe fn finish(fcinfo: pg_sys::FunctionCallInfo) -> Datum {
    use pg_sys::SetFunctionReturnMode::*;
    let Some(row) = ROW.with(|x| x.borrow_mut().take()) else {
        // `answer` leaves a row or an error (raised before this): a function that called
        // neither is a bug, not an empty answer.
        pgrx::error!("billing: internal error: a one-row function answered nothing");
    };
    let mut values: Vec<Datum> = row.iter().map(|v| v.unwrap_or(Datum::from(0usize))).collect();
    let mut nulls: Vec<bool> = row.iter().map(Option::is_none).collect();
    // As core's materializing functions (InitMaterializedSRF): every executor path
    // (a function scan, a target list, PL/pgSQL) accepts a materialized set.
    let rs = (*fcinfo).resultinfo as *mut pg_sys::ReturnSetInfo;
    let accepts = rs.as_ref().is_some_and(|r| {
        r.type_ == pg_sys::NodeTag::T_ReturnSetInfo && r.allowedModes & SFRM_Materialize as i32 != 0 && !r.expectedDesc.is_null()
    });
    if !accepts {
        pgrx::ereport!(
            ERROR,
            pgrx::PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "billing: set-valued function called in context that cannot accept a set"
        );
    }
    let desc = (*rs).expectedDesc;
    if (*desc).natts as usize != values.len() {
        pgrx::error!("billing: internal error: a row of {} columns for a row type of {}", values.len(), (*desc).natts);
    }
    let old = pg_sys::MemoryContextSwitchTo((*(*rs).econtext).ecxt_per_query_memory);
    let random = (*rs).allowedModes & SFRM_Materialize_Random as i32 != 0;
    let store = pg_sys::tuplestore_begin_heap(random, false, pg_sys::work_mem);
    // The executor frees a set's descriptor when done with it: hand it a copy.
    let set_desc = pg_sys::CreateTupleDescCopy(desc);
    pg_sys::MemoryContextSwitchTo(old);
    pg_sys::tuplestore_putvalues(store, desc, values.as_mut_ptr(), nulls.as_mut_ptr());
    (*rs).returnMode = SFRM_Materialize;
    (*rs).setResult = store;
    (*rs).setDesc = set_desc;
    (*fcinfo).isnull = true;
    Datum::from(0usize)
}
