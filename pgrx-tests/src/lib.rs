//! Client-side integration tests of the billing extension live in `tests/`; this crate has
//! no code of its own. They talk to a real server with the `postgres` client:
//!
//! ```text
//! source scripts/cluster.sh; cluster_start 54400
//! DATABASE_URL="host=$PGHOST port=$PGPORT user=postgres dbname=postgres" cargo test -p billing-it
//! cluster_stop
//! ```
//!
//! `DATABASE_URL` names a superuser connection to a PostgreSQL 15 server with the extension
//! installed (trust authentication, so the roles test can log in as the roles it creates).
//! Every test creates its own database `it_<test>_<pid>` with `CREATE EXTENSION billing`
//! and drops it at the end, so test binaries and tests run in parallel.
//!
//! - `model.rs`: randomized model test (`MODEL_SEED`, `MODEL_STEPS`, `MODEL_NO_EXPIRY`);
//! - `concurrency.rs`: races between many connections;
//! - `dump_restore.rs`: `pg_dump -Fc` / `pg_restore` (binaries from `PGBIN`, default
//!   `/usr/lib/postgresql/15/bin`);
//! - `roles.rs`: the extension's roles, a plain role, the append-only journal, a
//!   search_path attack;
//! - `regressions.rs`: the smallest reproductions of bugs the model test found.
