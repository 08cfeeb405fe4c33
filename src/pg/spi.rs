//! SPI plumbing: statements prepared once per backend and kept (`SPI_keepplan`), so the
//! hot path never re-parses SQL, plus small conversions.
use crate::error::BillingError;
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::{self, PgBuiltInOids, PgOid};
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiError, SpiTupleTable};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// A statement of the extension: fully schema-qualified, so the pinned `search_path`
/// of the `SECURITY DEFINER` functions cannot redirect it.
pub struct Stmt {
    pub sql: &'static str,
    pub args: &'static [PgBuiltInOids],
}

thread_local! {
    static PLANS: RefCell<HashMap<usize, Rc<OwnedPreparedStatement>>> = RefCell::new(HashMap::new());
}

impl From<SpiError> for BillingError {
    fn from(e: SpiError) -> Self {
        BillingError::new(crate::error::INTERNAL, format!("billing: internal SPI error: {e}"))
    }
}

/// Runs a kept plan. Every plan is prepared as mutating, so under READ COMMITTED each
/// statement takes a fresh snapshot: after waiting for a customer's lock it sees
/// what the previous holder committed.
pub fn run<'c>(c: &mut SpiClient<'c>, s: &Stmt, args: &[DatumWithOid]) -> Result<SpiTupleTable<'c>, BillingError> {
    run_as(c, s, args, false)
}

/// Runs a kept plan read-only: it sees the calling statement's snapshot, so several
/// reads of one call agree with each other and take no locks.
pub fn run_ro<'c>(c: &mut SpiClient<'c>, s: &Stmt, args: &[DatumWithOid]) -> Result<SpiTupleTable<'c>, BillingError> {
    run_as(c, s, args, true)
}

fn run_as<'c>(c: &mut SpiClient<'c>, s: &Stmt, args: &[DatumWithOid], ro: bool) -> Result<SpiTupleTable<'c>, BillingError> {
    let key = (s.sql.as_ptr() as usize) << 1 | ro as usize;
    let plan = match PLANS.with(|p| p.borrow().get(&key).cloned()) {
        Some(p) => p,
        None => {
            let oids: Vec<PgOid> = s.args.iter().map(|o| PgOid::BuiltIn(*o)).collect();
            let p = if ro { c.prepare(s.sql, &oids)? } else { c.prepare_mut(s.sql, &oids)? };
            let p = Rc::new(p.keep());
            PLANS.with(|m| m.borrow_mut().insert(key, p.clone()));
            p
        }
    };
    if ro {
        Ok(c.select(&*plan, None, args)?)
    } else {
        Ok(c.update(&*plan, None, args)?)
    }
}

/// Array parameters built with the element types' layouts known here: pgrx's `Vec`
/// conversion looks the array type and the element's layout up in the catalog caches on
/// every call (about 2,000 instructions per array; a debit's journal row has two). Every
/// `uuid[]`, `int8[]` and `jsonb` parameter goes through these.
pub fn uuid_array<'a>(v: &[pgrx::Uuid]) -> DatumWithOid<'a> {
    // construct_array copies each element from the pointer it is given.
    let mut elems: Vec<pg_sys::Datum> = v.iter().map(|u| pg_sys::Datum::from(u.as_bytes().as_ptr())).collect();
    let a = unsafe {
        pg_sys::construct_array(elems.as_mut_ptr(), elems.len() as i32, pg_sys::UUIDOID, 16, false, pg_sys::TYPALIGN_CHAR as std::ffi::c_char)
    };
    unsafe { DatumWithOid::new(pg_sys::Datum::from(a), PgBuiltInOids::UUIDARRAYOID.value()) }
}

/// `int8[]`, as `uuid_array` (int8 is passed by value on the 64-bit platforms pgrx builds for).
pub fn int8_array<'a>(v: &[i64]) -> DatumWithOid<'a> {
    const _: () = assert!(std::mem::size_of::<pg_sys::Datum>() == 8);
    let mut elems: Vec<pg_sys::Datum> = v.iter().map(|x| pg_sys::Datum::from(*x)).collect();
    let a = unsafe {
        pg_sys::construct_array(elems.as_mut_ptr(), elems.len() as i32, pg_sys::INT8OID, 8, true, pg_sys::TYPALIGN_DOUBLE as std::ffi::c_char)
    };
    unsafe { DatumWithOid::new(pg_sys::Datum::from(a), PgBuiltInOids::INT8ARRAYOID.value()) }
}

/// A `jsonb` parameter; `{}` (what most entries carry) built directly, and so is an
/// object of integers, strings, booleans and nulls (a hold's or a settle's metadata) with
/// `pushJsonbValue`, as `jsonb_in` builds it from text, without printing and parsing it
/// (some 5,000 instructions a call). Anything else (floats) goes through pgrx's text
/// round trip.
pub fn jsonb_param<'a>(v: serde_json::Value) -> DatumWithOid<'a> {
    if !v.as_object().is_some_and(|m| m.is_empty()) {
        if let Some(d) = v.as_object().and_then(jsonb_object) {
            return unsafe { DatumWithOid::new(d, PgBuiltInOids::JSONBOID.value()) };
        }
        return pgrx::JsonB(v).into();
    }
    // A jsonb container's header: the JB_FOBJECT flag and a count of zero pairs.
    const JB_FOBJECT: u32 = 0x2000_0000;
    unsafe {
        let p = pg_sys::palloc(8) as *mut u8;
        pgrx::varlena::set_varsize_4b(p as *mut pg_sys::varlena, 8);
        (p.add(4) as *mut u32).write(JB_FOBJECT);
        DatumWithOid::new(pg_sys::Datum::from(p), PgBuiltInOids::JSONBOID.value())
    }
}

/// The jsonb of a flat object (`jsonb_param`), or None if it holds anything `jsonb_in`
/// would not read back the same way from its text: a float (printed, then parsed as a
/// numeric), a nested value, a string with NUL (refused by `jsonb_in`) or a long one.
fn jsonb_object(m: &serde_json::Map<String, serde_json::Value>) -> Option<pg_sys::Datum> {
    use pg_sys::{jbvType, JsonbIteratorToken as T, JsonbValue};
    use serde_json::Value as V;
    let plain = |s: &str| s.len() < 1 << 20 && !s.contains('\0');
    let simple = |v: &V| match v {
        V::Null | V::Bool(_) => true,
        V::Number(n) => n.as_i64().is_some(),
        V::String(s) => plain(s),
        _ => false,
    };
    if !m.iter().all(|(k, v)| plain(k) && simple(v)) {
        return None;
    }
    fn string(s: &str) -> JsonbValue {
        let mut j: JsonbValue = unsafe { std::mem::zeroed() };
        j.type_ = jbvType::jbvString;
        j.val.string = pg_sys::JsonbValue__bindgen_ty_1__bindgen_ty_1 { len: s.len() as i32, val: s.as_ptr() as *mut std::ffi::c_char };
        j
    }
    // SAFETY: the values pushed point into `m`, which outlives the call; JsonbValueToJsonb
    // copies them into the palloc'd result, as jsonb_in's parser does.
    unsafe {
        let mut st: *mut pg_sys::JsonbParseState = std::ptr::null_mut();
        pg_sys::pushJsonbValue(&mut st, T::WJB_BEGIN_OBJECT, std::ptr::null_mut());
        for (k, v) in m {
            let mut key = string(k);
            pg_sys::pushJsonbValue(&mut st, T::WJB_KEY, &mut key);
            let mut val: JsonbValue = match v {
                V::String(s) => string(s),
                _ => std::mem::zeroed(),
            };
            match v {
                V::Null => val.type_ = jbvType::jbvNull,
                V::Bool(b) => {
                    val.type_ = jbvType::jbvBool;
                    val.val.boolean = *b;
                }
                V::Number(n) => {
                    val.type_ = jbvType::jbvNumeric;
                    val.val.numeric = pg_sys::int64_to_numeric(n.as_i64()?);
                }
                _ => {}
            }
            pg_sys::pushJsonbValue(&mut st, T::WJB_VALUE, &mut val);
        }
        let root = pg_sys::pushJsonbValue(&mut st, T::WJB_END_OBJECT, std::ptr::null_mut());
        Some(pg_sys::Datum::from(pg_sys::JsonbValueToJsonb(root)))
    }
}

pub fn nil() -> pgrx::Uuid {
    pgrx::Uuid::from_bytes([0u8; 16])
}

pub fn uuid(id: &[u8; 16]) -> pgrx::Uuid {
    pgrx::Uuid::from_bytes(*id)
}

pub fn id_of(u: &pgrx::Uuid) -> [u8; 16] {
    let mut b = [0u8; 16];
    b.copy_from_slice(u.as_bytes());
    b
}

pub fn ts(micros: i64) -> TimestampWithTimeZone {
    // i64::MAX and i64::MIN are Postgres' 'infinity' and '-infinity'.
    TimestampWithTimeZone::try_from(micros).unwrap_or_else(|_| TimestampWithTimeZone::positive_infinity())
}

pub fn micros(t: TimestampWithTimeZone) -> i64 {
    pg_sys::TimestampTz::from(t)
}

pub fn random_bytes(b: &mut [u8]) {
    if !unsafe { pg_sys::pg_strong_random(b.as_mut_ptr().cast(), b.len()) } {
        pgrx::error!("billing: could not generate random bytes");
    }
}

thread_local! {
    /// State of `quick_random_bytes`, and the process it was seeded in.
    static QUICK: std::cell::Cell<(u64, i32)> = const { std::cell::Cell::new((0, 0)) };
}

/// Bytes from a per-backend splitmix64 stream, seeded from `pg_strong_random` in the
/// backend that first draws (a preloaded library is mapped by the postmaster: the pid
/// check keeps two backends from sharing a stream). For bits that only keep ids apart,
/// never for secrets: a strong draw costs ~8,500 instructions, a third of what the rest
/// of a debit's Rust code takes (callgrind).
pub fn quick_random_bytes(b: &mut [u8]) {
    let pid = unsafe { pg_sys::MyProcPid };
    QUICK.with(|q| {
        let (mut s, seeded) = q.get();
        if seeded != pid {
            let mut seed = [0u8; 8];
            random_bytes(&mut seed);
            s = u64::from_le_bytes(seed) ^ (pid as u64).rotate_left(32);
        }
        for chunk in b.chunks_mut(8) {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
        q.set((s, pid));
    });
}

/// A time-ordered (version 7) uuid: ids of one customer's entries sort by creation, and
/// the B-tree over them stays append-mostly instead of touching random pages.
pub fn new_id() -> [u8; 16] {
    let mut b = [0u8; 16];
    random_bytes(&mut b);
    let unix_ms = (unsafe { pg_sys::GetCurrentTimestamp() } / 1000 + 946_684_800_000) as u64;
    b[..6].copy_from_slice(&unix_ms.to_be_bytes()[2..]);
    b[6] = (b[6] & 0x0f) | 0x70;
    b[8] = (b[8] & 0x3f) | 0x80;
    b
}

/// Takes a transaction-scoped advisory lock on `parts`, hashed to 64 bits, in the key
/// space `class`. It waits like a row lock (deadlocks and `lock_timeout` raise 40P01 /
/// 55P03, `pg_locks` shows it as an advisory lock) but takes no page and writes no WAL.
/// The tag's fourth field is the class: the SQL functions `pg_advisory_*` use 1 and 2,
/// so an application's own advisory locks never meet ours, and two names meet only if
/// their 64-bit hashes do.
pub fn xact_lock(class: LockClass, parts: &[&str]) {
    acquire(class, parts, false);
}

/// `xact_lock` without waiting: false when another transaction holds it.
pub fn try_xact_lock(class: LockClass, parts: &[&str]) -> bool {
    acquire(class, parts, true) != pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL
}

/// `xact_lock` that says whether this call took the lock (false: the transaction held it
/// already), so a caller that wrote nothing under it may give it back (`xact_unlock`).
pub fn xact_lock_new(class: LockClass, parts: &[&str]) -> bool {
    acquire(class, parts, false) == pg_sys::LockAcquireResult::LOCKACQUIRE_OK
}

/// Gives back one acquisition of a lock taken by `xact_lock_new` (before the transaction
/// ends): only for a caller that read under it and wrote nothing.
pub fn xact_unlock(class: LockClass, parts: &[&str]) {
    unlock_in_mode(class, parts, pg_sys::ExclusiveLock, false);
}

fn tag(class: LockClass, parts: &[&str]) -> pg_sys::LOCKTAG {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    let h = h.finalize();
    pg_sys::LOCKTAG {
        locktag_field1: unsafe { pg_sys::MyDatabaseId }.into(),
        locktag_field2: u32::from_be_bytes([h[0], h[1], h[2], h[3]]),
        locktag_field3: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
        locktag_field4: class as u16,
        locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
    }
}

fn acquire(class: LockClass, parts: &[&str], dont_wait: bool) -> pg_sys::LockAcquireResult::Type {
    lock_in_mode(class, parts, pg_sys::ExclusiveLock, false, dont_wait)
}

/// The same key space in another lock mode, transaction- or session-scoped (what the
/// outbox's wake-up uses: writers and waiting consumers in two modes that conflict only
/// with each other).
pub fn lock_in_mode(class: LockClass, parts: &[&str], mode: u32, session: bool, dont_wait: bool) -> pg_sys::LockAcquireResult::Type {
    let tag = tag(class, parts);
    unsafe { pg_sys::LockAcquire(&tag, mode as pg_sys::LOCKMODE, session, dont_wait) }
}

/// Whether this backend holds the lock in `mode` (in either scope).
pub fn held_in_mode(class: LockClass, parts: &[&str], mode: u32) -> bool {
    let tag = tag(class, parts);
    #[cfg(not(any(feature = "pg17", feature = "pg18")))]
    let held = unsafe { pg_sys::LockHeldByMe(&tag, mode as pg_sys::LOCKMODE) };
    // 17 added `orstronger`; false asks for this very mode, as before.
    #[cfg(any(feature = "pg17", feature = "pg18"))]
    let held = unsafe { pg_sys::LockHeldByMe(&tag, mode as pg_sys::LOCKMODE, false) };
    held
}

/// Gives back one acquisition of `lock_in_mode`.
pub fn unlock_in_mode(class: LockClass, parts: &[&str], mode: u32, session: bool) {
    let tag = tag(class, parts);
    unsafe { pg_sys::LockRelease(&tag, mode as pg_sys::LOCKMODE, session) };
}

/// The extension's advisory lock classes (`pg_locks.objsubid` of its locks).
#[derive(Clone, Copy)]
#[repr(u16)]
pub enum LockClass {
    /// One customer's ledger: every balance change holds it to the end of its transaction.
    Customer = 0x4243, // "BC"
    /// One webhook event id, while it is stored and applied.
    Event = 0x4245, // "BE"
    /// The outbox's wake-up (`access::outbox`): writers and waiting consumers.
    Outbox = 0x424f, // "BO"
}

/// Runs `f` in a subtransaction: on success it is kept; on an error (ours, or a Postgres
/// ERROR raised inside) everything `f` did is rolled back and the error returned, while
/// the surrounding transaction goes on. Webhook apply failures use it so the raw event
/// is still stored, marked failed.
pub fn subxact<T>(f: impl FnOnce() -> Result<T, BillingError> + std::panic::UnwindSafe) -> Result<T, BillingError> {
    use pgrx::pg_sys::panic::CaughtError;
    unsafe {
        let cxt = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(cxt);
        let r = pgrx::PgTryBuilder::new(f)
            .catch_others(|e| {
                let (code, msg) = match &e {
                    CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) | CaughtError::RustPanic { ereport: r, .. } => {
                        (r.sql_error_code(), r.message().to_string())
                    }
                };
                Err(BillingError::new(crate::error::INTERNAL, format!("{msg} ({code:?})")))
            })
            .execute();
        if r.is_ok() {
            pg_sys::ReleaseCurrentSubTransaction();
        } else {
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
        }
        pg_sys::MemoryContextSwitchTo(cxt);
        pg_sys::CurrentResourceOwner = owner;
        r
    }
}
