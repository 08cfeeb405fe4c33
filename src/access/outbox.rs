//! The outbox's wake-up: `NOTIFY billing` only while a consumer waits.
//!
//! A transaction that notifies holds one cluster-wide lock from its pre-commit through its
//! commit's WAL flush (`PreCommit_Notify`, so that queue entries follow commit order): the
//! commits of all notifying transactions run one at a time, a flush each. Ingest writes an
//! outbox row for about every other event, and that lock alone cost it ~30% of its rate.
//!
//! So a writer notifies only when a consumer may be asleep. A consumer whose
//! `claim_outbox` came back empty holds the outbox lock in Share mode, session-scoped,
//! until a claim returns rows again. A writer asks for the same lock in RowExclusive mode
//! (the two conflict; neither conflicts with itself) without waiting: if it cannot have
//! it, it notifies; if it can, it keeps it to the end of its transaction and notifies
//! nobody. A consumer about to wait therefore first waits for those writers to commit
//! (its Share request queues behind them, and writers that come later see the request and
//! notify), then claims once more, with a fresh snapshot: a row committed without a
//! notify is claimed before the consumer sleeps.
use crate::pg::spi::{held_in_mode, lock_in_mode, unlock_in_mode, LockClass};
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;
use pgrx::prelude::*;
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

fn waiting_here() -> bool {
    held_in_mode(LockClass::Outbox, &[], WAITER)
}

/// A snapshot for the whole transaction (REPEATABLE READ, SERIALIZABLE): a claim cannot
/// see rows committed after it began.
fn xact_snapshot() -> bool {
    unsafe { pg_sys::XactIsoLevel >= pg_sys::XACT_REPEATABLE_READ as i32 }
}

/// For each outbox row written (the `outbox_wake` trigger).
fn wake() {
    // This session's own consumer waits too: it is not woken by a lock it holds itself.
    if NOTIFY_ALWAYS.get()
        || waiting_here()
        || lock_in_mode(LockClass::Outbox, &[], WRITER, false, true) == pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL
    {
        notify();
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn outbox_wake_trigger(_fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    wake();
    pg_sys::Datum::from(0usize)
}
crate::sql_entry!(pg_finfo_billing_outbox_wake, billing_outbox_wake, outbox_wake_trigger);

/// After a claim that came back empty: from now on writers notify. True when the caller
/// should claim once more now (READ COMMITTED, and the wait was not already on): rows of
/// writers that committed before the Share lock was granted were not notified.
#[pg_extern(sql = false)]
fn outbox_wait() -> bool {
    if waiting_here() {
        return false;
    }
    lock_in_mode(LockClass::Outbox, &[], WAITER, true, false);
    if xact_snapshot() {
        // Those rows may be invisible to this transaction's snapshot: wake this session
        // once after its commit, so that its next claim (a new snapshot) looks again.
        notify();
        return false;
    }
    true
}
crate::sql_entry!(pg_finfo_billing_outbox_wait, billing_outbox_wait, outbox_wait_wrapper);

/// After a claim that returned rows: the consumer is awake, writers stop notifying. Under
/// a transaction snapshot the wait stays on (see `outbox_wait`): such a consumer is
/// notified of every row.
#[pg_extern(sql = false)]
fn outbox_awake() {
    if !xact_snapshot() && waiting_here() {
        unlock_in_mode(LockClass::Outbox, &[], WAITER, true);
    }
}
crate::sql_entry!(pg_finfo_billing_outbox_awake, billing_outbox_awake, outbox_awake_wrapper);
