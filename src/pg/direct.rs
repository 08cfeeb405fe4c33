//! Rows read by an index without the executor: what the spending calls read once they
//! hold the customer's lock (the account, the entry under an idempotency key, a usage's
//! rows, a hold), `can_access`'s row (read-only), the access inputs (the subscription, its
//! plan, a grant, waiting failed events) and a webhook endpoint with its secrets.
//!
//! Why: a kept SPI plan still builds its executor state at every run (a tuple
//! descriptor and a projection per node, a scan per table, a join), about 75,000
//! instructions for the two-row lookup of a debit, where the lookup itself (two btree
//! descents and two heap fetches) is a fifth of that. Reading through the index's
//! access method gives the same answer for less: the same snapshot a mutating SPI
//! statement takes (the command counter advanced, then a fresh snapshot under READ
//! COMMITTED: it sees what the lock's previous holder committed), the same relation
//! lock, the same predicate locks (the access methods take them). Reads only: writes go
//! through SQL, with their triggers, constraints and WAL as the executor makes them.
//!
//! Not used (the caller runs its statement instead) on Citus, where the rows live in
//! shards on other nodes, under a transaction snapshot, where the callers' statements
//! also lock rows, or when an index does not compare text in the "C" collation that
//! scan keys assume (a table not made by this version's scripts).
use pgrx::pg_sys::{self, Datum, Oid};
use std::cell::RefCell;

/// An index of one of the extension's tables, the columns a read matches (in the
/// order of the values passed to `fetch`), and which of the matching rows it wants.
pub struct Index {
    slot: usize,
    table: &'static std::ffi::CStr,
    index: &'static std::ffi::CStr,
    columns: &'static [(&'static std::ffi::CStr, Match)],
    /// The last matching row in the index's order, not the first.
    last: bool,
    /// Whether the index is unique. A read by one that is not takes the first row it
    /// finds, as `LIMIT 1` would.
    unique: bool,
}

impl Index {
    /// A unique index read for the one row that matches.
    const fn unique(
        slot: usize,
        table: &'static std::ffi::CStr,
        index: &'static std::ffi::CStr,
        columns: &'static [(&'static std::ffi::CStr, Match)],
    ) -> Index {
        Index { slot, table, index, columns, last: false, unique: true }
    }
}

/// How a column is matched (the btree opclass's operator).
#[derive(Clone, Copy)]
pub enum Match {
    /// text `=` (a text datum: `text`)
    TextEq,
    /// timestamptz `<=` (microseconds)
    TimeLe,
    /// uuid `=` (a uuid datum: `uuid`)
    UuidEq,
    /// bigint `=`
    Int8Eq,
}

impl Match {
    fn key(self) -> (pg_sys::StrategyNumber, u32) {
        match self {
            Match::TextEq => (pg_sys::BTEqualStrategyNumber as _, pg_sys::F_TEXTEQ),
            Match::TimeLe => (pg_sys::BTLessEqualStrategyNumber as _, pg_sys::F_TIMESTAMPTZ_LE),
            Match::UuidEq => (pg_sys::BTEqualStrategyNumber as _, pg_sys::F_UUID_EQ),
            Match::Int8Eq => (pg_sys::BTEqualStrategyNumber as _, pg_sys::F_INT8EQ),
        }
    }

    /// The collation the index's column must have: scan keys compare text in "C".
    fn collation(self) -> Oid {
        match self {
            Match::TextEq => pg_sys::C_COLLATION_OID,
            Match::TimeLe | Match::UuidEq | Match::Int8Eq => pg_sys::InvalidOid,
        }
    }
}

/// A text value to match, in the current memory context.
pub fn text(s: &str) -> Datum {
    Datum::from(pgrx::rust_str_to_text_p(s).into_pg())
}

/// A uuid value to match, in the current memory context.
pub fn uuid(u: pgrx::Uuid) -> Datum {
    pgrx::IntoDatum::into_datum(u).unwrap_or(Datum::from(0usize))
}

use Match::{Int8Eq, TextEq, TimeLe, UuidEq};
/// `billing.customers` by its primary key: (customer).
pub static CUSTOMER: Index = Index::unique(0, c"customers", c"customers_pkey", &[(c"customer", TextEq)]);
/// `billing.journal` by (customer, idempotency_key).
pub static JOURNAL_KEY: Index = Index::unique(1, c"journal", c"journal_idempotency_key", &[(c"customer", TextEq), (c"idempotency_key", TextEq)]);
/// `billing.usage_events` by (customer, idempotency_key).
pub static USAGE_KEY: Index = Index::unique(2, c"usage_events", c"usage_events_pkey", &[(c"customer", TextEq), (c"idempotency_key", TextEq)]);
/// `billing.usage_carry` by (customer, meter).
pub static CARRY: Index = Index::unique(3, c"usage_carry", c"usage_carry_pkey", &[(c"customer", TextEq), (c"meter", TextEq)]);
/// `billing.meter_prices`: a meter's price in force at a time, the last one from before it.
pub static PRICE_AT: Index =
    Index { last: true, ..Index::unique(4, c"meter_prices", c"meter_prices_pkey", &[(c"meter", TextEq), (c"effective_from", TimeLe)]) };
/// `billing.reservations` by id alone, for ids that are not located (see `Op::hold_id`;
/// not unique: on Citus a unique index must lead with the customer).
pub static RESERVATION_ID: Index = Index { unique: false, ..Index::unique(5, c"reservations", c"reservations_id", &[(c"id", UuidEq)]) };
/// `billing.reservations` by its primary key: (customer, id).
pub static RESERVATION: Index = Index::unique(6, c"reservations", c"reservations_pkey", &[(c"customer", TextEq), (c"id", UuidEq)]);
/// `billing.provider_customers` by its primary key: (provider, provider_customer).
pub static PROVIDER_CUSTOMER: Index =
    Index::unique(7, c"provider_customers", c"provider_customers_pkey", &[(c"provider", TextEq), (c"provider_customer", TextEq)]);
/// `billing.events` by its primary key: (provider, event_id).
pub static EVENT: Index = Index::unique(8, c"events", c"events_pkey", &[(c"provider", TextEq), (c"event_id", TextEq)]);
/// `billing.customers` by account number (not unique: see `customers_num`).
pub static CUSTOMER_NUM: Index = Index { unique: false, ..Index::unique(9, c"customers", c"customers_num", &[(c"num", Int8Eq)]) };
/// `billing.plans` by its primary key: (plan).
pub static PLAN: Index = Index::unique(10, c"plans", c"plans_pkey", &[(c"plan", TextEq)]);
/// `billing.plans` by its provider price (unique).
pub static PLAN_PRICE: Index = Index::unique(11, c"plans", c"plans_provider_price_key", &[(c"provider_price", TextEq)]);
/// A customer's subscription every reader chooses: the first of `subscriptions_current`,
/// whose order is the access statements' `ORDER BY` (not unique: the first row).
pub static SUB_CURRENT: Index = Index { unique: false, ..Index::unique(12, c"subscriptions", c"subscriptions_current", &[(c"customer", TextEq)]) };
/// A grant of the customer, any (not unique: the first row).
pub static GRANT_OF: Index = Index { unique: false, ..Index::unique(13, c"grants", c"grants_pkey", &[(c"customer", TextEq)]) };
/// A failed event of the customer (the partial index of failed events by customer).
pub static FAILED_OF_CUSTOMER: Index = Index { unique: false, ..Index::unique(14, c"events", c"events_failed_app", &[(c"customer", TextEq)]) };
/// A failed event of a provider customer (the partial index of failed events by provider customer).
pub static FAILED_OF_PROVIDER_CUSTOMER: Index =
    Index { unique: false, ..Index::unique(15, c"events", c"events_failed", &[(c"provider_customer", TextEq)]) };
/// `billing.endpoints` by its primary key: (name).
pub static ENDPOINT: Index = Index::unique(16, c"endpoints", c"endpoints_pkey", &[(c"name", TextEq)]);
/// An endpoint's secrets (`fetch_all`: every row of the endpoint in `endpoint_secrets_pkey`).
pub static SECRETS: Index = Index { unique: false, ..Index::unique(17, c"endpoint_secrets", c"endpoint_secrets_pkey", &[(c"endpoint", TextEq)]) };
const SLOTS: usize = 18;

#[derive(Clone, Copy)]
enum Resolved {
    Unknown,
    /// The index (of `table`, when there is one) does not suit a direct read: callers
    /// use their statement.
    Unusable {
        table: Oid,
    },
    /// `columns` are the index's columns `columns[i]`.
    Ready {
        table: Oid,
        index: Oid,
        columns: [pg_sys::AttrNumber; 2],
    },
}

thread_local! {
    static RESOLVED: RefCell<[Resolved; SLOTS]> = const { RefCell::new([Resolved::Unknown; SLOTS]) };
    static WATCHING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Forgets every resolved oid when the cache entry of one of our relations is
/// invalidated (DROP, ALTER, REINDEX, an update of the extension, the extension made
/// again), or all of them are: the next read resolves the names again.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn forget(_arg: Datum, relid: Oid) {
    RESOLVED.with(|r| {
        let mut r = r.borrow_mut();
        let ours = relid == pg_sys::InvalidOid
            || r.iter().any(|x| match *x {
                Resolved::Ready { table, index, .. } => relid == table || relid == index,
                Resolved::Unusable { table } => relid == table,
                Resolved::Unknown => false,
            });
        if ours {
            *r = [Resolved::Unknown; SLOTS];
        }
    });
}

/// Whether a direct read may stand in for the caller's statement in this transaction.
pub fn usable() -> bool {
    !crate::cluster::citus() && (unsafe { pg_sys::XactIsoLevel }) < pg_sys::XACT_REPEATABLE_READ as i32
}

fn resolve(ix: &Index) -> Resolved {
    let known = RESOLVED.with(|r| r.borrow()[ix.slot]);
    if !matches!(known, Resolved::Unknown) {
        return known;
    }
    if !WATCHING.with(|w| w.replace(true)) {
        // SAFETY: registered once per backend; the callback only touches this module's state.
        unsafe { pg_sys::CacheRegisterRelcacheCallback(Some(forget), Datum::from(0usize)) };
    }
    // SAFETY: catalog lookups by name; the index is opened (and its lock taken) only to
    // read its columns' collations.
    let found = unsafe {
        let nsp = pg_sys::get_namespace_oid(c"billing".as_ptr(), true);
        let table = pg_sys::get_relname_relid(ix.table.as_ptr(), nsp);
        let index = pg_sys::get_relname_relid(ix.index.as_ptr(), nsp);
        let mut ok = nsp != pg_sys::InvalidOid && table != pg_sys::InvalidOid && index != pg_sys::InvalidOid && ix.columns.len() <= 2;
        let mut columns = [0 as pg_sys::AttrNumber; 2];
        if ok {
            let irel = pg_sys::index_open(index, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
            let form = (*irel).rd_index;
            let nkeys = (*form).indnkeyatts as usize;
            let keys = std::slice::from_raw_parts((*form).indkey.values.as_ptr(), nkeys);
            let colls = std::slice::from_raw_parts((*irel).rd_indcollation, nkeys);
            // Each matched column is a key column of this valid index of the table (a
            // unique one where the read counts on it), text compared as scan keys
            // compare it (the "C" collation).
            ok = (!ix.unique || (*form).indisunique) && (*form).indisvalid && (*form).indrelid == table;
            for (i, (name, m)) in ix.columns.iter().enumerate() {
                let attno = pg_sys::get_attnum(table, name.as_ptr());
                match keys.iter().position(|k| *k == attno) {
                    Some(at) if attno > 0 && colls[at] == m.collation() => columns[i] = at as pg_sys::AttrNumber + 1,
                    _ => ok = false,
                }
            }
            pg_sys::index_close(irel, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        }
        if ok {
            Resolved::Ready { table, index, columns }
        } else {
            Resolved::Unusable { table }
        }
    };
    RESOLVED.with(|r| r.borrow_mut()[ix.slot] = found);
    found
}

/// The row of each index's table whose columns match the values given (in the index's
/// `columns` order: a `text` datum for text, microseconds for a time), each as a
/// composite value (a whole-row read: `whole_row::read_datum`), all under one snapshot,
/// as a mutating statement would see them now. None when some index cannot be read so:
/// the caller runs its statement.
pub fn fetch(reads: &[(&Index, &[Datum])]) -> Option<Vec<Option<Datum>>> {
    read(reads, true, false)
}

/// `fetch` as a read-only statement reads (`spi::run_ro`): under the calling statement's
/// snapshot, what a `STABLE` function sees (can_access in a policy). Usable on a standby
/// and in a parallel worker.
pub fn fetch_ro(reads: &[(&Index, &[Datum])]) -> Option<Vec<Option<Datum>>> {
    read(reads, true, true)
}

/// Whether the row `fetch` would read exists, without copying it (nor its TOASTed
/// values). None when the index cannot be read so.
pub fn exists(ix: &Index, values: &[Datum]) -> Option<bool> {
    read(&[(ix, values)], false, false).map(|rows| rows[0].is_some())
}

/// Every row whose columns match the values given (the index's first columns), in the
/// index's order, each as a composite value, under a new snapshot as `fetch` reads. None
/// when the index cannot be read so.
pub fn fetch_all(ix: &Index, values: &[Datum]) -> Option<Vec<Datum>> {
    unsafe { pg_sys::AcceptInvalidationMessages() };
    let Resolved::Ready { table, index, columns } = resolve(ix) else { return None };
    debug_assert_eq!(values.len(), ix.columns.len());
    // SAFETY: as `read`'s.
    unsafe {
        pg_sys::CommandCounterIncrement();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        let o = Open::begin(ix, table, index, pg_sys::GetActiveSnapshot());
        o.rescan(ix, &columns, values);
        let mut rows = Vec::new();
        while o.next(pg_sys::ScanDirection::ForwardScanDirection) {
            rows.push(o.copy());
        }
        o.end();
        pg_sys::PopActiveSnapshot();
        Some(rows)
    }
}

/// An index scan of a read, and the slot its rows land in.
struct Open {
    slot: usize,
    rel: pg_sys::Relation,
    irel: pg_sys::Relation,
    scan: pg_sys::IndexScanDesc,
    tuple_slot: *mut pg_sys::TupleTableSlot,
}

impl Open {
    /// Opens and locks the table and its index as the executor would for a read (the
    /// locks kept to the transaction's end) and begins a scan under `snapshot`.
    unsafe fn begin(ix: &Index, table: Oid, index: Oid, snapshot: pg_sys::Snapshot) -> Open {
        let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
        let n = ix.columns.len() as i32;
        let rel = pg_sys::table_open(table, lock);
        let irel = pg_sys::index_open(index, lock);
        #[cfg(not(feature = "pg18"))]
        let scan = pg_sys::index_beginscan(rel, irel, snapshot, n, 0);
        #[cfg(feature = "pg18")]
        let scan = pg_sys::index_beginscan(rel, irel, snapshot, std::ptr::null_mut(), n, 0);
        let tuple_slot = pg_sys::table_slot_create(rel, std::ptr::null_mut());
        Open { slot: ix.slot, rel, irel, scan, tuple_slot }
    }

    /// Points the scan at the rows whose columns (the index's `columns`) match `values`.
    unsafe fn rescan(&self, ix: &Index, columns: &[pg_sys::AttrNumber; 2], values: &[Datum]) {
        let mut keys: [pg_sys::ScanKeyData; 2] = std::mem::zeroed();
        for (i, (_, m)) in ix.columns.iter().enumerate() {
            let (strategy, proc) = m.key();
            pg_sys::ScanKeyInit(&mut keys[i], columns[i], strategy, pg_sys::RegProcedure::from(proc), values[i]);
        }
        pg_sys::index_rescan(self.scan, keys.as_mut_ptr(), ix.columns.len() as i32, std::ptr::null_mut(), 0);
    }

    /// The next row into the slot; false when there is none.
    unsafe fn next(&self, direction: pg_sys::ScanDirection::Type) -> bool {
        pg_sys::index_getnext_slot(self.scan, direction, self.tuple_slot)
    }

    /// The slot's row, copied out as a composite value (before the scan moves on).
    unsafe fn copy(&self) -> Datum {
        let mut free = false;
        let tuple = pg_sys::ExecFetchSlotHeapTuple(self.tuple_slot, false, &mut free);
        pg_sys::heap_copy_tuple_as_datum(tuple, (*self.rel).rd_att)
    }

    unsafe fn end(self) {
        pg_sys::index_endscan(self.scan);
        pg_sys::ExecDropSingleTupleTableSlot(self.tuple_slot);
        pg_sys::index_close(self.irel, pg_sys::NoLock as pg_sys::LOCKMODE);
        pg_sys::table_close(self.rel, pg_sys::NoLock as pg_sys::LOCKMODE);
    }
}

/// `fetch`, each row found copied out (`copy`) or only noted (a zero datum); read-only
/// (`ro`) under the active snapshot, else under a new one as a mutating statement.
fn read(reads: &[(&Index, &[Datum])], copy: bool, ro: bool) -> Option<Vec<Option<Datum>>> {
    if ro && !unsafe { pg_sys::ActiveSnapshotSet() } {
        return None;
    }
    // Invalidations another session sent (an index dropped and made again by an update)
    // reach `forget` before a kept oid is used; a cheap check when there are none.
    unsafe { pg_sys::AcceptInvalidationMessages() };
    let mut ready = Vec::with_capacity(reads.len());
    for (ix, values) in reads {
        let Resolved::Ready { table, index, columns } = resolve(ix) else { return None };
        debug_assert_eq!(values.len(), ix.columns.len());
        ready.push((table, index, columns));
    }
    // One scan per index, begun at its first read and ended after the last.
    let mut open: Vec<Open> = Vec::with_capacity(2);
    // SAFETY: each relation is opened and locked as the executor would for a read, the
    // scans run under a snapshot pushed for them, and each row is copied out before its
    // scan moves on. An error raised inside aborts the (sub)transaction, which pops the
    // snapshot and releases the rest.
    unsafe {
        // As a mutating SPI statement: what this transaction wrote so far is visible.
        if !ro {
            pg_sys::CommandCounterIncrement();
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        }
        let snapshot = pg_sys::GetActiveSnapshot();
        let mut rows = Vec::with_capacity(reads.len());
        for ((ix, values), (table, index, columns)) in reads.iter().zip(ready) {
            let at = match open.iter().position(|o| o.slot == ix.slot) {
                Some(at) => at,
                None => {
                    open.push(Open::begin(ix, table, index, snapshot));
                    open.len() - 1
                }
            };
            let o = &open[at];
            o.rescan(ix, &columns, values);
            let direction = if ix.last { pg_sys::ScanDirection::BackwardScanDirection } else { pg_sys::ScanDirection::ForwardScanDirection };
            rows.push(if o.next(direction) { Some(if copy { o.copy() } else { Datum::from(0usize) }) } else { None });
        }
        for o in open {
            o.end();
        }
        if !ro {
            pg_sys::PopActiveSnapshot();
        }
        Some(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every index, at its slot (the slot keys this backend's resolved oids).
    static ALL: [&Index; SLOTS] = [
        &CUSTOMER,
        &JOURNAL_KEY,
        &USAGE_KEY,
        &CARRY,
        &PRICE_AT,
        &RESERVATION_ID,
        &RESERVATION,
        &PROVIDER_CUSTOMER,
        &EVENT,
        &CUSTOMER_NUM,
        &PLAN,
        &PLAN_PRICE,
        &SUB_CURRENT,
        &GRANT_OF,
        &FAILED_OF_CUSTOMER,
        &FAILED_OF_PROVIDER_CUSTOMER,
        &ENDPOINT,
        &SECRETS,
    ];

    #[test]
    fn each_index_has_its_own_slot() {
        for (i, ix) in ALL.iter().enumerate() {
            assert_eq!(ix.slot, i, "{:?}", ix.index);
            assert!(ix.columns.len() <= 2, "{:?}: at most two columns", ix.index);
        }
    }
}
