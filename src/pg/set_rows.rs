//! Set-returning functions (`debit_many`, `record_usage_many`) answered in materialize
//! mode: every row in one call.
//!
//! pgrx's `TableIterator` speaks value-per-call: Postgres calls the function once per
//! row, and once more to hear that there is no other. Each call of a `SECURITY DEFINER`
//! function with `SET` clauses goes through `fmgr_security_definer`, which installs and
//! removes those settings (the pinned `search_path`, the hot path's `enable_seqscan`):
//! ~10,000 instructions a row, 6% of a batch's item (callgrind, a batch of 1,000). Here
//! the entry point, after the first call (which did the work and holds every row), asks
//! pgrx's wrapper for the rest itself, inside that first call, puts them in a
//! tuplestore and tells the executor the set is complete.
use pgrx::pg_sys;

/// Drains a value-per-call set function whose first call just answered `first`: calls
/// `wrapper` for the other rows and returns them all materialized. Leaves everything as
/// it was when the caller does not accept a materialized set, gave no expected row type,
/// or the first call answered no row.
///
/// # Safety
/// `fcinfo` is the call's own, `wrapper` the pgrx wrapper that answered `first` for it.
pub unsafe fn drain(
    fcinfo: pg_sys::FunctionCallInfo,
    first: pg_sys::Datum,
    wrapper: unsafe extern "C-unwind" fn(pg_sys::FunctionCallInfo) -> pg_sys::Datum,
) -> pg_sys::Datum {
    use pg_sys::{ExprDoneCond::*, SetFunctionReturnMode::*};
    unsafe {
        let rsinfo = (*fcinfo).resultinfo as *mut pg_sys::ReturnSetInfo;
        if rsinfo.is_null()
            || (*rsinfo).type_ != pg_sys::NodeTag::T_ReturnSetInfo
            || (*rsinfo).returnMode != SFRM_ValuePerCall
            || (*rsinfo).isDone != ExprMultipleResult
            || (*rsinfo).allowedModes & SFRM_Materialize as i32 == 0
            || (*rsinfo).expectedDesc.is_null()
        {
            return first;
        }
        let old = pg_sys::MemoryContextSwitchTo((*(*rsinfo).econtext).ecxt_per_query_memory);
        let desc = pg_sys::CreateTupleDescCopy((*rsinfo).expectedDesc);
        let random = (*rsinfo).allowedModes & SFRM_Materialize_Random as i32 != 0;
        let store = pg_sys::tuplestore_begin_heap(random, false, pg_sys::work_mem);
        pg_sys::MemoryContextSwitchTo(old);
        let mut d = first;
        while (*rsinfo).isDone == ExprMultipleResult {
            // Each row is a composite datum (a plain 4-byte varlena pgrx just formed):
            // the tuplestore copies it in.
            let header = d.cast_mut_ptr::<pg_sys::HeapTupleHeaderData>();
            let mut tuple = pg_sys::HeapTupleData {
                t_len: pgrx::varlena::varsize_4b(header.cast()) as u32,
                t_self: pg_sys::ItemPointerData::default(),
                t_tableOid: pg_sys::InvalidOid,
                t_data: header,
            };
            pg_sys::tuplestore_puttuple(store, &mut tuple);
            // As the executor prepares each value-per-call call.
            (*rsinfo).isDone = ExprSingleResult;
            (*fcinfo).isnull = false;
            d = wrapper(fcinfo);
        }
        // pgrx's last call ended its multi-call context (SRF_RETURN_DONE).
        (*rsinfo).returnMode = SFRM_Materialize;
        (*rsinfo).isDone = ExprSingleResult;
        (*rsinfo).setResult = store;
        (*rsinfo).setDesc = desc;
        (*fcinfo).isnull = true;
        pg_sys::Datum::from(0usize)
    }
}
