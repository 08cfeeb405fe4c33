//! billing: a billing-consistency core for AI products, inside PostgreSQL.
//!
//! Layout: one module per area (`ledger`, `webhook`, `access`, `usage`, `maintenance`),
//! each with its pure rules apart from its SQL-facing functions (`api`) and SPI glue
//! (`store`); the PostgreSQL plumbing they share in `pg`; the hand-written DDL and
//! function declarations in `sql/`. The ledger depends on nothing above it.
use pgrx::prelude::*;

pub mod access;
pub mod batch;
pub mod clock;
pub mod cluster;
pub mod error;
pub mod ledger;
pub mod maintenance;
pub mod pg;
#[cfg(test)]
mod proptests;
#[cfg(any(test, feature = "pg_test"))]
pub mod test_sql;
pub mod usage;
pub mod webhook;

::pgrx::pg_module_magic!(name, version);

// The schema as it is now, one file per concept, in dependency order (each file's
// objects use only those of the files before it). History lives in the upgrade scripts
// sql/billing--A--B.sql; sql/releases says which commit each release was made from.
extension_sql_file!("../sql/ledger.sql", name = "ledger", bootstrap);
extension_sql_file!("../sql/webhooks.sql", name = "webhooks", requires = ["ledger"]);
extension_sql_file!("../sql/plans.sql", name = "plans", requires = ["webhooks"]);
extension_sql_file!("../sql/usage.sql", name = "usage", requires = ["plans"]);
extension_sql_file!("../sql/outbox.sql", name = "outbox", requires = ["usage"]);
extension_sql_file!("../sql/operations.sql", name = "operations", requires = ["outbox"]);
extension_sql_file!("../sql/cluster.sql", name = "cluster", requires = ["operations"]);
extension_sql_file!("../sql/roles.sql", name = "roles", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    clock::register();
    webhook::ingest::register();
    access::outbox::register();
    unsafe { pgrx::pg_sys::MarkGUCPrefixReserved(c"billing".as_ptr()) };
}

#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
