//! Table rows read whole: `SELECT c FROM billing.customers c` hands back one composite
//! column, and its fields are taken apart here in one pass.
//!
//! Why: the executor builds a tuple descriptor for every node's output at every run, one
//! `TupleDescInitEntry` (with its type-cache lookup) per column, and compiles a
//! projection step per column. A lookup that names 25 columns of two joined tables paid
//! that for each column three times (both scans and the join), then read each one with
//! `SPI_getbinval`, which walks the row from its start past every varlena. A whole-row
//! column is one output column per table, its descriptor the type cache's, and
//! `heap_deform_tuple` walks the row once.
//!
//! Fields are found by name, not position: a table's column numbers depend on its
//! history (upgrade scripts add columns at the end, a dropped column keeps its slot).
//! The map from names to attribute numbers is computed once per row type and version of
//! it (the type cache's `tupDesc_identifier` changes with every ALTER TABLE).
use crate::error::{BillingError, Result, INTERNAL};
use pgrx::pg_sys::{self, Datum, Oid};
use pgrx::prelude::*;
use pgrx::spi::SpiTupleTable;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// The fields a reader takes from one table's rows, by name; `Row::get(i)` reads the
/// i-th of them.
pub struct Fields(pub &'static [&'static str]);

/// Where each of a `Fields`' names sits in one version of the row type: its index in the
/// deformed row and its type.
type Layout = Rc<[(usize, Oid)]>;

thread_local! {
    static LAYOUTS: RefCell<HashMap<(usize, u64), Layout>> = RefCell::new(HashMap::new());
}

/// One row taken apart. Its values point into the composite value it came from (in an
/// SPI tuple table, or copied out by `direct`) and are copied out by `get`.
pub struct Row {
    values: Vec<Datum>,
    nulls: Vec<bool>,
    layout: Layout,
}

impl Row {
    /// The `i`-th field of the reader's `Fields`, or None if it is NULL. A Rust type that
    /// does not match the column's is an internal error, as pgrx's own SPI reads make it.
    pub fn get<T: FromDatum + IntoDatum>(&self, i: usize) -> Result<Option<T>> {
        let (at, typ) = self.layout[i];
        if !T::is_compatible_with(typ) {
            return Err(BillingError::new(INTERNAL, format!("billing: internal error: field {i} read as the wrong type ({typ:?})")));
        }
        if self.nulls[at] {
            return Ok(None);
        }
        // SAFETY: the datum came from heap_deform_tuple over a row of this layout's
        // version, is not null, and is of type `typ`.
        Ok(unsafe { T::from_polymorphic_datum(self.values[at], false, typ) })
    }
}

/// Takes apart the composite value in column `ordinal` of the table's current row, a row
/// the statement always has (the table it selects from): NULL is an internal error.
pub fn read(t: &SpiTupleTable<'_>, ordinal: usize, fields: &'static Fields) -> Result<Row> {
    read_opt(t, ordinal, fields)?.ok_or_else(|| BillingError::new(INTERNAL, format!("billing: internal error: column {ordinal} read as NULL")))
}

/// `read` of a row that may be missing (the outer side of a LEFT JOIN): None if NULL. A
/// name of `fields` the row type lacks is an internal error (the extension's own
/// statements read its own tables).
pub fn read_opt(t: &SpiTupleTable<'_>, ordinal: usize, fields: &'static Fields) -> Result<Option<Row>> {
    read_datum(t.get_datum_by_ordinal(ordinal)?, fields)
}

/// `read` of a composite value in hand (a row `direct` read, a column of a row kept).
pub fn read_value(d: Datum, fields: &'static Fields) -> Result<Row> {
    read_datum(Some(d), fields)?.ok_or_else(|| BillingError::new(INTERNAL, "billing: internal error: a row read as NULL"))
}

/// `read_opt` of a composite value in hand (a row `direct` read), None if there is none.
pub fn read_datum(d: Option<Datum>, fields: &'static Fields) -> Result<Option<Row>> {
    let Some(d) = d else { return Ok(None) };
    // SAFETY: the column is a composite (the statement selects a whole row) and not null;
    // pg_detoast_datum gives a 4-byte-header copy if it was stored short or compressed.
    unsafe {
        let td = pg_sys::pg_detoast_datum(d.cast_mut_ptr()) as pg_sys::HeapTupleHeader;
        let typid = (*td).t_choice.t_datum.datum_typeid;
        let tc = pg_sys::lookup_type_cache(typid, pg_sys::TYPECACHE_TUPDESC as i32);
        let desc = (*tc).tupDesc;
        if desc.is_null() {
            return Err(BillingError::new(INTERNAL, format!("billing: type {typid:?} is not a table's row type")));
        }
        let layout = layout(fields, (*tc).tupDesc_identifier, desc)?;
        let n = (*desc).natts as usize;
        let mut values = vec![Datum::from(0usize); n];
        let mut nulls = vec![true; n];
        let mut tuple = pg_sys::HeapTupleData {
            t_len: pgrx::varlena::varsize(td as *const pg_sys::varlena) as u32,
            t_self: pg_sys::ItemPointerData::default(),
            t_tableOid: pg_sys::InvalidOid,
            t_data: td,
        };
        pg_sys::heap_deform_tuple(&mut tuple, desc, values.as_mut_ptr(), nulls.as_mut_ptr());
        Ok(Some(Row { values, nulls, layout }))
    }
}

/// The layout of `fields` in the row type version `ident` (described by `desc`).
unsafe fn layout(fields: &'static Fields, ident: u64, desc: pg_sys::TupleDesc) -> Result<Layout> {
    let key = (fields as *const Fields as usize, ident);
    if let Some(l) = LAYOUTS.with(|m| m.borrow().get(&key).cloned()) {
        return Ok(l);
    }
    // pgrx reads the attributes as each version lays them out (18 keeps them after its
    // compact_attrs, with no `attrs` field); the descriptor stays the caller's.
    let tupdesc = pgrx::PgTupleDesc::from_pg_unchecked(desc);
    let attrs: Vec<&pg_sys::FormData_pg_attribute> = tupdesc.iter().collect();
    let mut out = Vec::with_capacity(fields.0.len());
    for name in fields.0 {
        let found = attrs.iter().position(|a| !a.attisdropped && std::ffi::CStr::from_ptr(a.attname.data.as_ptr()).to_bytes() == name.as_bytes());
        match found {
            Some(at) => out.push((at, attrs[at].atttypid)),
            None => return Err(BillingError::new(INTERNAL, format!("billing: internal error: no column \"{name}\" in the row read"))),
        }
    }
    let l: Layout = out.into();
    LAYOUTS.with(|m| m.borrow_mut().insert(key, l.clone()));
    Ok(l)
}
