//! Functions that answer one row (`debit`, `settle`, `ingest`, ...): declared with OUT
//! parameters, `RETURNS record` (not a set), so the answer is
//! one composite value that works wherever a value does: `SELECT * FROM billing.debit(..)`,
//! `SELECT (billing.debit(..)).balance_after`, `coalesce((billing.record_usage(..)).credits, 0)`,
//! PL/pgSQL `SELECT * INTO`, `LATERAL`.
//!
//! The Rust function hands its row to [`answer`] and returns nothing; the entry point
//! ([`finish`], through `sql_entry!`'s `one_row` flag) forms a heap tuple of the function's
//! declared row type and returns it as a composite Datum (`HeapTupleGetDatum`).
//!
//! Cost. The function is called once per row, and the row type is looked up and blessed
//! once per call site: it is kept in the call site's `flinfo->fn_extra` (allocated in
//! `fn_mcxt`, so it lives as long as the `FmgrInfo`: the statement, or a PL/pgSQL or SQL
//! function's cached plan). A `SECURITY DEFINER` function is called through
//! `fmgr_security_definer`, which keeps the inner `FmgrInfo` it passes us across calls,
//! so the cache holds there too. A statement that calls a function many times (`LATERAL`,
//! a target list over many rows) looks its row type up once; a statement per call (an
//! application's prepared `SELECT * FROM billing.debit($1, $2, $3)`) gets a new
//! `FmgrInfo`, so once per statement: in FROM from the row type the executor planned
//! (`expectedDesc`, copied and blessed: ~500 instructions), elsewhere from `pg_proc`
//! (`get_call_result_type`: ~7,800). Against 0.8.0's one-row set in materialize mode
//! (callgrind, `bench/instructions.sh`, release build): a prepared debit in FROM costs
//! the same (~369,300 instructions; Postgres puts a non-set function's composite into a
//! tuplestore of its own, as it did the set), `(billing.debit(..)).balance_after` ~10,000
//! fewer (~352,700 against ~362,800: no ProjectSet, no tuplestore).
//!
//! A row's columns stay in a fixed array, not a `Vec`: no allocation between `answer` and
//! `finish`. The entry point still works while a database has the 0.8.0 declarations
//! (`RETURNS TABLE ... ROWS 1`, before `ALTER EXTENSION billing UPDATE`): a set-returning
//! function that answers one value and leaves `isDone` alone has answered one row, and
//! its `TABLE` columns make the same row type (pg_test
//! `entry_point_serves_the_old_set_declaration`).
use crate::error::{deliver, Result};
use pgrx::pg_sys::{self, Datum};
use pgrx::{pg_guard, IntoDatum};
use std::cell::Cell;

/// The most columns a one-row function answers (`access`: six).
const MAX_COLUMNS: usize = 6;

/// A row's columns: values, and which are NULL.
#[derive(Clone, Copy)]
pub struct Cols {
    values: [Datum; MAX_COLUMNS],
    nulls: [bool; MAX_COLUMNS],
    n: usize,
}

impl Cols {
    const EMPTY: Cols = Cols { values: [Datum::null(); MAX_COLUMNS], nulls: [true; MAX_COLUMNS], n: 0 };

    fn push(&mut self, d: Option<Datum>) {
        // Only the `Row` impls below push, each at most MAX_COLUMNS times.
        self.values[self.n] = d.unwrap_or(Datum::null());
        self.nulls[self.n] = d.is_none();
        self.n += 1;
    }
}

thread_local! {
    /// The row of the call in progress, between `answer` and `finish`.
    static ROW: Cell<Option<Cols>> = const { Cell::new(None) };
}

/// A one-row function's row: its columns in the declared order.
pub trait Row {
    fn cols(self) -> Cols;
}

macro_rules! impl_row {
    ($($t:ident),+) => {
        impl<$($t: IntoDatum),+> Row for ($($t,)+) {
            #[allow(non_snake_case)]
            fn cols(self) -> Cols {
                let ($($t,)+) = self;
                let mut c = Cols::EMPTY;
                $(c.push($t.into_datum());)+
                c
            }
        }
    };
}
impl_row!(A);
impl_row!(A, B);
impl_row!(A, B, C);
impl_row!(A, B, C, D);
impl_row!(A, B, C, D, E);
impl_row!(A, B, C, D, E, F);

/// The answer of a one-row function: its row, or its error (raised by the entry point,
/// see `error::deliver`). Pass-by-reference values are made in the calling memory
/// context, which outlives the call's return to `finish`.
pub fn answer<T: Row>(r: Result<T>) {
    if let Some(row) = deliver(r.map(Some), || None) {
        ROW.with(|x| x.set(Some(row.cols())));
    }
}

/// Forgets a row left by a call that errored out after answering. Called at every entry.
pub fn clear() {
    ROW.with(|x| x.set(None));
}

/// The call site's row type, blessed (so a record Datum can name it): looked up on the
/// first call and kept in `fn_extra` for the next ones.
///
/// # Safety
/// `fcinfo` is the call's own, of a function declared to return a row type.
unsafe fn row_type(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::TupleDesc {
    let flinfo = (*fcinfo).flinfo;
    if flinfo.is_null() {
        pgrx::error!("billing: internal error: a one-row function called without its FmgrInfo");
    }
    let kept = (*flinfo).fn_extra as pg_sys::TupleDesc;
    if !kept.is_null() {
        return kept;
    }
    // In FROM (a function scan, PL/pgSQL's SELECT INTO) the executor hands over the row
    // type it planned; elsewhere it is read from pg_proc, which costs ~15 times more.
    let rs = (*fcinfo).resultinfo as *const pg_sys::ReturnSetInfo;
    let mut desc = match rs.as_ref() {
        Some(r) if r.type_ == pg_sys::NodeTag::T_ReturnSetInfo => r.expectedDesc,
        _ => std::ptr::null_mut(),
    };
    if desc.is_null() {
        let class = pg_sys::get_call_result_type(fcinfo, std::ptr::null_mut(), &mut desc);
        if class != pg_sys::TypeFuncClass::TYPEFUNC_COMPOSITE || desc.is_null() {
            pgrx::error!("billing: internal error: a one-row function must be declared with OUT parameters");
        }
    }
    let old = pg_sys::MemoryContextSwitchTo((*flinfo).fn_mcxt);
    let kept = pg_sys::BlessTupleDesc(pg_sys::CreateTupleDescCopy(desc));
    pg_sys::MemoryContextSwitchTo(old);
    (*flinfo).fn_extra = kept.cast();
    kept
}

/// Returns the row `answer` left, as one composite value of the declared row type.
/// Guarded: an error of Postgres here (out of memory) is raised as an ERROR, not unwound
/// into the entry point.
///
/// # Safety
/// `fcinfo` is the call's own, of a function declared to return a row type.
#[pg_guard]
pub unsafe extern "C-unwind" fn finish(fcinfo: pg_sys::FunctionCallInfo) -> Datum {
    let Some(mut row) = ROW.with(|x| x.take()) else {
        // `answer` leaves a row or an error (raised before this): a function that called
        // neither is a bug, not an empty answer.
        pgrx::error!("billing: internal error: a one-row function answered nothing");
    };
    let desc = row_type(fcinfo);
    if (*desc).natts as usize != row.n {
        pgrx::error!("billing: internal error: a row of {} columns for a row type of {}", row.n, (*desc).natts);
    }
    let tuple = pg_sys::heap_form_tuple(desc, row.values.as_mut_ptr(), row.nulls.as_mut_ptr());
    (*fcinfo).isnull = false;
    pg_sys::HeapTupleHeaderGetDatum((*tuple).t_data)
}
