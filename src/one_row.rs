//! Functions declared `RETURNS TABLE` that always answer one row (`debit`, `settle`,
//! `ingest`, ...), handed back in materialize mode.
//!
//! pgrx's `TableIterator` speaks value-per-call: Postgres calls the function once for the
//! row and once more to hear that there is no other. Every call of a `SECURITY DEFINER`
//! function with `SET` clauses goes through `fmgr_security_definer`, which installs and
//! removes those settings (the pinned `search_path`, the hot path's `enable_seqscan`):
//! about 12,000 instructions of a debit's 449,717 went to that second call
//! (`bench/instructions.sh`, `bench/README.md`). After the first call returns its row,
//! [`finish`] puts it in a tuplestore, ends the multi-call context (which drops pgrx's
//! iterator, as its own last call would) and tells the executor the set is complete: one
//! call per row.
use pgrx::pg_sys;

/// Turns the value-per-call answer `d` of a one-row function's first call into a
/// materialized result. Leaves everything as it was when the caller does not accept a
/// materialized set, gave no expected row type, or the call was not a first row.
///
/// # Safety
/// `fcinfo` is the call's own, and `d` what pgrx's wrapper just returned for it.
pub unsafe fn finish(fcinfo: pg_sys::FunctionCallInfo, d: pg_sys::Datum) -> pg_sys::Datum {
    use pg_sys::{ExprDoneCond::*, SetFunctionReturnMode::*};
    unsafe {
        let rsinfo = (*fcinfo).resultinfo as *mut pg_sys::ReturnSetInfo;
        if rsinfo.is_null()
            || (*rsinfo).type_ != pg_sys::NodeTag::T_ReturnSetInfo
            || (*rsinfo).returnMode != SFRM_ValuePerCall
            || (*rsinfo).isDone != ExprMultipleResult
            || (*rsinfo).allowedModes & SFRM_Materialize as i32 == 0
            || (*rsinfo).expectedDesc.is_null()
            || (*fcinfo).isnull
        {
            return d;
        }
        let funcctx = (*(*fcinfo).flinfo).fn_extra as *mut pg_sys::FuncCallContext;
        if funcctx.is_null() {
            return d;
        }
        let old = pg_sys::MemoryContextSwitchTo((*(*rsinfo).econtext).ecxt_per_query_memory);
        let desc = pg_sys::CreateTupleDescCopy((*rsinfo).expectedDesc);
        let random = (*rsinfo).allowedModes & SFRM_Materialize_Random as i32 != 0;
        let store = pg_sys::tuplestore_begin_heap(random, false, pg_sys::work_mem);
        pg_sys::MemoryContextSwitchTo(old);
        // The row is a composite datum (a plain 4-byte varlena, just formed by pgrx) in
        // the multi-call context: copy it in before that context goes.
        let header = d.cast_mut_ptr::<pg_sys::HeapTupleHeaderData>();
        let mut tuple = pg_sys::HeapTupleData {
            t_len: pgrx::varlena::varsize_4b(header.cast()) as u32,
            t_self: pg_sys::ItemPointerData::default(),
            t_tableOid: pg_sys::InvalidOid,
            t_data: header,
        };
        pg_sys::tuplestore_puttuple(store, &mut tuple);
        pg_sys::end_MultiFuncCall(fcinfo, funcctx);
        (*rsinfo).returnMode = SFRM_Materialize;
        (*rsinfo).isDone = ExprSingleResult;
        (*rsinfo).setResult = store;
        (*rsinfo).setDesc = desc;
        (*fcinfo).isnull = true;
        pg_sys::Datum::from(0usize)
    }
}
