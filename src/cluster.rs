//! What changes when the extension runs on a Citus cluster (sql/cluster.sql has
//! `billing.distribute()`).
//!
//! Two things that a single server gets from node-local state must hold cluster-wide:
//! - the customer lock. On one server it is a transaction-scoped advisory lock, which
//!   takes no page and writes no WAL; advisory locks are per node, so on a server that
//!   runs Citus the ledger locks the customer's row instead (`SELECT ... FOR NO KEY
//!   UPDATE`, routed to the shard that holds it, wherever the call runs). Which of the two
//!   is decided by whether Citus is loaded in the server (`shared_preload_libraries`),
//!   which is fixed for the life of the server: every backend of a node decides alike, and
//!   a Citus node uses the row lock before and after `distribute()`.
//! - customer numbers (`customers.num`, carried by entry ids) and outbox ids. A sequence
//!   counts per node, so an id is the node's count in its low bits and the node's Citus
//!   group id above them (0 on a single server and on the coordinator).
use pgrx::prelude::*;
use std::cell::Cell;

thread_local! {
    static CITUS: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Whether Citus is loaded in this server: a setting of its own exists only then.
pub fn citus() -> bool {
    CITUS.with(|c| {
        c.get().unwrap_or_else(|| {
            let loaded = unsafe { !pgrx::pg_sys::GetConfigOption(c"citus.node_conninfo".as_ptr(), true, false).is_null() };
            c.set(Some(loaded));
            loaded
        })
    })
}

/// This node's Citus group id: 0 without Citus, on the coordinator, and before the node
/// joins a cluster. Read each time (a node gets its group when it is added; customers
/// are made rarely).
fn group_id() -> i64 {
    if !citus() {
        return 0;
    }
    Spi::connect(|c| {
        let has = c.select("SELECT to_regclass('pg_catalog.pg_dist_local_group') IS NOT NULL", None, &[])?.first().get::<bool>(1)?;
        if has != Some(true) {
            return Ok::<i64, pgrx::spi::SpiError>(0);
        }
        Ok(c.select("SELECT groupid::int8 FROM pg_catalog.pg_dist_local_group", None, &[])?.first().get::<i64>(1)?.unwrap_or(0))
    })
    // Never a silent 0: on a worker that would repeat the coordinator's numbers.
    .unwrap_or_else(|e| panic!("billing: cannot read this node's Citus group: {e}"))
}

/// `billing._node_id(seq, bits)`, the default of ids that must stay unique across the
/// nodes of a cluster (customers.num, outbox.id): the next value of this node's sequence
/// `seq` in the low `bits` bits (its MAXVALUE keeps it there), the node's group above them.
#[pg_extern(sql = false)]
fn node_id(seq: pgrx::pg_sys::Oid, bits: i32) -> i64 {
    let n = unsafe { pgrx::fcinfo::direct_function_call::<i64>(pgrx::pg_sys::nextval_oid, &[Some(seq.into())]) }.expect("nextval returns a value");
    (group_id() << bits) | n
}
crate::sql_entry!(pg_finfo_billing_node_id, billing_node_id, node_id_wrapper);

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// Without Citus, distribute() refuses with 55000 and a message saying what is
    /// missing, and changes nothing.
    #[pg_test]
    fn distribute_without_citus_is_55000() {
        let before = Spi::get_one::<i64>("SELECT count(*) FROM pg_class WHERE relnamespace = 'billing'::regnamespace").unwrap();
        Spi::run(
            "CREATE FUNCTION pg_temp.error_of(q text) RETURNS text LANGUAGE plpgsql AS $$
             BEGIN EXECUTE q; RETURN 'ok'; EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ' ' || SQLERRM; END $$",
        )
        .unwrap();
        let e = Spi::get_one::<String>("SELECT pg_temp.error_of('SELECT billing.distribute()')").unwrap().unwrap_or_default();
        assert!(e.starts_with("55000 ") && e.contains("needs Citus"), "{e}");
        let after = Spi::get_one::<i64>("SELECT count(*) FROM pg_class WHERE relnamespace = 'billing'::regnamespace").unwrap();
        assert_eq!(before, after);
    }

    /// Off Citus the ledger takes the advisory lock; a customer number is the sequence's
    /// value with group 0 above it.
    #[pg_test]
    fn one_server_uses_the_advisory_lock_and_plain_numbers() {
        assert!(!super::citus());
        Spi::run("SELECT billing.grant('num-a', 10, 'g'), billing.grant('num-b', 10, 'g')").unwrap();
        let nums =
            Spi::get_one::<i64>("SELECT count(*) FROM billing.customers WHERE customer IN ('num-a', 'num-b') AND num < 4294967296 AND num > 0")
                .unwrap();
        assert_eq!(nums, Some(2));
        Spi::run("SELECT * FROM billing.debit('num-a', 1, 'd')").unwrap();
        let advisory =
            Spi::get_one::<i64>("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 16963 AND pid = pg_backend_pid()").unwrap();
        assert!(advisory.unwrap_or(0) >= 1, "no customer advisory lock held");
    }
}
