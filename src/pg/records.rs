//! Many rows as one `record[]` parameter, read back with
//! `unnest($1::record[]) AS u(name type, ...)`: one array and one function scan for all
//! the columns. With an array per column, `unnest(a, b, ...)` runs one function per
//! column, each materialized into a tuplestore of its own, and pgrx builds each array
//! with catalog lookups: ~4x the cost per row (a batch's write of 28 columns).
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::pg_sys::BuiltinOid::RECORDARRAYOID;

/// Rows of anonymous records of one row type, built in the current memory context.
pub struct Records {
    desc: pg_sys::TupleDesc,
    rows: Vec<pg_sys::Datum>,
}

impl Records {
    /// Records whose columns have `types`: the column definition list that reads them
    /// back must name the same types in the same order.
    pub fn new(types: &[pg_sys::Oid]) -> Self {
        unsafe {
            let desc = pg_sys::CreateTemplateTupleDesc(types.len() as i32);
            for (i, t) in types.iter().enumerate() {
                pg_sys::TupleDescInitEntry(desc, (i + 1) as pg_sys::AttrNumber, std::ptr::null(), *t, -1, 0);
            }
            // Blessed: the records carry its typmod, which the function scan checks
            // against the column definition list.
            Records { desc: pg_sys::BlessTupleDesc(desc), rows: vec![] }
        }
    }

    /// Appends a row: one value per column, `None` for NULL.
    pub fn push(&mut self, values: &[Option<pg_sys::Datum>]) {
        unsafe {
            debug_assert_eq!(values.len(), (*self.desc).natts as usize);
            let mut datums: Vec<pg_sys::Datum> = values.iter().map(|v| v.unwrap_or(pg_sys::Datum::from(0))).collect();
            let mut nulls: Vec<bool> = values.iter().map(Option::is_none).collect();
            let t = pg_sys::heap_form_tuple(self.desc, datums.as_mut_ptr(), nulls.as_mut_ptr());
            self.rows.push(pg_sys::heap_copy_tuple_as_datum(t, self.desc));
            pg_sys::heap_freetuple(t);
        }
    }

    /// The rows as a `record[]` parameter.
    pub fn param<'a>(mut self) -> DatumWithOid<'a> {
        unsafe {
            let a = pg_sys::construct_array(
                self.rows.as_mut_ptr(),
                self.rows.len() as i32,
                pg_sys::RECORDOID,
                -1,
                false,
                pg_sys::TYPALIGN_DOUBLE as std::ffi::c_char,
            );
            DatumWithOid::new(pg_sys::Datum::from(a), RECORDARRAYOID.value())
        }
    }
}
