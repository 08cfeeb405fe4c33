//! The outbox's wake-up: `NOTIFY billing` only while a consumer waits, with no state kept
//! in any session.
//!
//! A transaction that notifies holds one cluster-wide lock from its pre-commit through its
//! commit's WAL flush (`PreCommit_Notify`, so that queue entries follow commit order): the
//! commits of all notifying transactions run one at a time, a flush each. Ingest writes an
//! outbox row for about every other event, and that lock alone cost it ~30% of its rate.
//!
//! So a writer notifies only when a consumer may be asleep. A consumer whose
//! `claim_outbox` came back empty writes a lease, a row of `billing.outbox_waiters`
//! (its name, `until`), in the claim's transaction: a table, not a session lock, so it
//! holds behind a transaction-mode pooler (where a session lock stays on a pooled server
//! connection, and its LISTEN is elsewhere) and, as a reference table, on every Citus node.
//! A claim that returns rows ends its consumer's lease; a dead consumer's lease ends when
//! `until` passes.
//!
//! Every place that writes outbox rows calls [`write`] (no trigger: on Citus a trigger
//! runs on the shard, where reading another table is a nested distributed query). Once per
//! (sub)transaction the writer takes the outbox lock in RowExclusive mode, transaction-
//! scoped, without waiting, then reads the leases with the latest snapshot (not its own,
//! which under REPEATABLE READ may predate a lease): it notifies if it could not have the
//! lock or an unexpired lease exists. The empty claim, before it claims once more, takes
//! the same lock in Share mode, also transaction-scoped (the two conflict; neither
//! conflicts with itself): it waits for the writers that hold it, which may have read the
//! leases before this one commits, and writers that come while it is held notify. Its
//! second claim, with a fresh snapshot (READ COMMITTED), sees their rows; a writer that
//! comes after its commit sees its lease. Both locks end with their transactions.
use crate::error::Result;
use crate::pg::spi::{held_in_mode, lock_in_mode, Stmt};
use pgrx::datum::DatumWithOid;
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use std::cell::Cell;
use std::ffi::c_char;

/// Every outbox row notifies, as before 0.7.0: for consumers that `LISTEN` and read the
/// outbox without `claim_outbox` (they never wait in the sense above).
pub static NOTIFY_ALWAYS: GucSetting<bool> = GucSetting::<bool>::new(false);

pub fn register() {
    GucRegistry::define_bool_guc(
        c"billing.outbox_notify_always",
        c"Send NOTIFY billing for every transaction that writes an outbox row, not only while a consumer waits.",
        c"Each notifying commit holds a cluster-wide lock until it is flushed: notifying commits run one at a time.",
        &NOTIFY_ALWAYS,
        GucContext::Userset,
        GucFlags::default(),
    );
}

const WRITER: u32 = pg_sys::RowExclusiveLock;
const WAITER: u32 = pg_sys::ShareLock;

unsafe extern "C-unwind" {
    // commands/async.h (not in pgrx's bindings): what NOTIFY and pg_notify() call.
    fn Async_Notify(channel: *const c_char, payload: *const c_char);
}

fn notify() {
    // It may raise an ERROR (a parallel worker, a full queue): turned into a Rust panic.
    unsafe { pg_sys::ffi::pg_guard_ffi_boundary(|| Async_Notify(c"billing".as_ptr(), c"".as_ptr())) }
}

/// A snapshot for the whole transaction (REPEATABLE READ, SERIALIZABLE): a claim cannot
/// see rows committed after it began.
fn xact_snapshot() -> bool {
    unsafe { pg_sys::XactIsoLevel >= pg_sys::XACT_REPEATABLE_READ as i32 }
}

thread_local! {
    /// The (transaction, subtransaction) whose wake-up is decided: its later rows need no
    /// second look. A NOTIFY or lock of a subtransaction that aborts is gone with it, so
    /// the key is the subtransaction, not only the transaction.
    static DECIDED: Cell<(pg_sys::TransactionId, pg_sys::SubTransactionId)> = const { Cell::new((pg_sys::InvalidTransactionId, 0)) };
    /// The kept plan of `LEASED` (revalidated by the plan cache if the table is made again).
    static LEASE_PLAN: Cell<pg_sys::SPIPlanPtr> = const { Cell::new(std::ptr::null_mut()) };
}

/// By `until`'s index (callers run with enable_seqscan = off), against the statement's
/// start: never earlier than the clock, so a live lease always counts.
const LEASED: &std::ffi::CStr = c"SELECT 1 FROM billing.outbox_waiters w WHERE w.until > pg_catalog.statement_timestamp() LIMIT 1";

/// Whether an unexpired lease exists, as last committed (the latest snapshot, whatever
/// this transaction's isolation: a lease committed after its snapshot counts).
fn leased() -> bool {
    unsafe {
        let mut plan = LEASE_PLAN.with(Cell::get);
        if plan.is_null() {
            plan = pg_sys::SPI_prepare(LEASED.as_ptr(), 0, std::ptr::null_mut());
            if plan.is_null() || pg_sys::SPI_keepplan(plan) != 0 {
                pgrx::error!("billing: could not prepare the outbox lease check");
            }
            LEASE_PLAN.with(|p| p.set(plan));
        }
        let rc = pg_sys::SPI_execute_snapshot(
            plan,
            std::ptr::null_mut(),
            std::ptr::null(),
            pg_sys::GetLatestSnapshot(),
            std::ptr::null_mut(),
            true,
            false,
            1,
        );
        if rc != pg_sys::SPI_OK_SELECT as i32 {
            pgrx::error!("billing: the outbox lease check failed ({rc})");
        }
        let found = pg_sys::SPI_processed > 0;
        pg_sys::SPI_freetuptable(pg_sys::SPI_tuptable);
        found
    }
}

/// After this transaction wrote outbox rows (SPI connected): `NOTIFY billing` on commit if
/// a consumer may be waiting.
pub fn wake() {
    let here = unsafe { (pg_sys::GetTopTransactionIdIfAny(), pg_sys::GetCurrentSubTransactionId()) };
    if here.0 != pg_sys::InvalidTransactionId && DECIDED.with(Cell::get) == here {
        return;
    }
    // A consumer waiting in this very transaction is not held off by its own lock.
    if NOTIFY_ALWAYS.get()
        || held_in_mode(crate::pg::spi::LockClass::Outbox, &[], WAITER)
        || lock_in_mode(crate::pg::spi::LockClass::Outbox, &[], WRITER, false, true) == pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL
        || leased()
    {
        notify();
    }
    DECIDED.with(|d| d.set(here));
}

/// Runs a statement that writes outbox rows and wakes a waiting consumer if it wrote any.
/// Every writer of `billing.outbox` goes through here.
pub fn write(c: &mut SpiClient<'_>, s: &Stmt, args: &[DatumWithOid]) -> Result<usize> {
    let n = crate::pg::spi::run(c, s, args)?.len();
    if n > 0 {
        wake();
    }
    Ok(n)
}

/// After a claim that came back empty and wrote this consumer's lease (`fresh`: it had
/// none unexpired): waits for the writers that may have missed the lease, and keeps the
/// ones that come until this transaction ends notifying. True when the caller should
/// claim once more now (READ COMMITTED: it sees what those writers committed).
#[pg_extern(sql = false)]
fn outbox_wait_lease(fresh: Option<bool>) -> bool {
    lock_in_mode(crate::pg::spi::LockClass::Outbox, &[], WAITER, false, false);
    if xact_snapshot() {
        // Their rows may be invisible to this transaction's snapshot: wake this consumer
        // once after the commit, so that its next claim (a new snapshot) looks again. Only
        // for a new lease: under an unexpired one, every such writer notified already (or
        // was waited for by the claim that wrote it, which woke its consumer).
        if fresh.unwrap_or(true) {
            notify();
        }
        return false;
    }
    true
}
crate::sql_entry!(pg_finfo_billing_outbox_wait_lease, billing_outbox_wait_lease, outbox_wait_lease_wrapper);

// 0.8.0's install script names these symbols (its outbox_wake trigger, _outbox_wait and
// _outbox_awake, dropped by the 0.9.0 update): a CREATE EXTENSION ... VERSION '0.8.0'
// must find them. Until the update a 0.8.0 schema notifies for every row, as 0.6.0 did,
// and takes no session lock.
#[pg_guard]
unsafe extern "C-unwind" fn legacy_outbox_wake(_fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    notify();
    pg_sys::Datum::from(0usize)
}
crate::sql_entry!(pg_finfo_billing_outbox_wake, billing_outbox_wake, legacy_outbox_wake);

#[pg_guard]
unsafe extern "C-unwind" fn legacy_outbox_wait(_fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    pg_sys::Datum::from(false)
}
crate::sql_entry!(pg_finfo_billing_outbox_wait, billing_outbox_wait, legacy_outbox_wait);

#[pg_guard]
unsafe extern "C-unwind" fn legacy_outbox_awake(_fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    pg_sys::Datum::from(0usize)
}
crate::sql_entry!(pg_finfo_billing_outbox_awake, billing_outbox_awake, legacy_outbox_awake);
