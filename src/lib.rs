//! billing: a billing-consistency core for AI products, inside PostgreSQL.
//!
//! Layout: pure rules (`ledger::core`, `webhook::signature`) apart from the SPI glue
//! (`ledger::store`, `spi`), SQL-facing functions in `ledger::api`, hand-written DDL
//! and function declarations in `sql/`.
use pgrx::prelude::*;

pub mod access;
pub mod clock;
pub mod error;
pub mod jsonb;
pub mod ledger;
pub mod maintenance;
pub mod one_row;
pub mod spi;
pub mod usage;
pub mod webhook;
pub mod whole_row;
#[cfg(test)] mod proptests;
#[cfg(any(test, feature = "pg_test"))] pub mod test_sql;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!("../sql/ledger.sql", name = "ledger", requires = ["schema"]);
// Same order as the upgrade path: 0.1.0's files, then what 0.2.0 added.
extension_sql_file!("../sql/privileges.sql", name = "privileges", requires = ["ledger"]);
extension_sql_file!("../sql/webhook.sql", name = "webhook", requires = ["privileges"]);
extension_sql_file!("../sql/privileges_webhook.sql", name = "privileges_webhook", requires = ["webhook"]);
extension_sql_file!("../sql/access.sql", name = "access", requires = ["privileges_webhook"]);
extension_sql_file!("../sql/fixes_0_3_0.sql", name = "fixes_0_3_0", requires = ["access"]);
extension_sql_file!("../sql/privileges_access.sql", name = "privileges_access", requires = ["fixes_0_3_0"]);
// 0.4.0
extension_sql_file!("../sql/hot_path.sql", name = "hot_path", requires = ["privileges_access"]);
// 0.5.0
extension_sql_file!("../sql/draw.sql", name = "draw", requires = ["hot_path"]);
extension_sql_file!("../sql/slots.sql", name = "slots", requires = ["draw"]);
// 0.6.0
extension_sql_file!("../sql/layout.sql", name = "layout", requires = ["slots"]);
extension_sql_file!("../sql/head.sql", name = "head", requires = ["layout"]);
extension_sql_file!("../sql/access_order.sql", name = "access_order", requires = ["head"]);
extension_sql_file!("../sql/entry_ids.sql", name = "entry_ids", requires = ["access_order"]);
// 0.7.0
extension_sql_file!("../sql/outbox_wake.sql", name = "outbox_wake", requires = ["entry_ids"]);
extension_sql_file!("../sql/event_storage.sql", name = "event_storage", requires = ["outbox_wake"]);
// 0.8.0
extension_sql_file!("../sql/hot_checks.sql", name = "hot_checks", requires = ["event_storage"]);
// 0.9.0
extension_sql_file!("../sql/plan_periods.sql", name = "plan_periods", requires = ["hot_checks"]);
extension_sql_file!("../sql/reconcile.sql", name = "reconcile", requires = ["plan_periods"]);
extension_sql_file!("../sql/one_row_composites.sql", name = "one_row_composites", requires = ["reconcile"]);
extension_sql_file!("../sql/secrets_check.sql", name = "secrets_check", finalize);

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
