#!/usr/bin/env bash
# Runs every test layer. Installs what it needs (scripts/bootstrap.sh); safe to re-run.
#   0.   cargo fmt --check and cargo clippy -D warnings
#   1+2. Rust unit tests (pure rules, signatures) and #[pg_test]s, via cargo pgrx test
#   3.   isolation specs (pg_isolation_regress) and the client-side crate (pgrx-tests/:
#        randomized model, many-connection races, dump/restore, roles) against a
#        throwaway cluster this script starts
#   +    the example receiver over HTTP (scripts/receiver.py), and the upgrade-script check
#        (released scripts frozen, upgrade path == fresh install)
set -euo pipefail
cd "$(dirname "$0")/.."
export PGRX_HOME=${PGRX_HOME:-$HOME/.pgrx}
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
TEST_PORT=${TEST_PORT:-54329}
unset RUST_BACKTRACE

./scripts/bootstrap.sh

section() { printf '\n==== %s\n' "$*"; }

section "format and lint: cargo fmt --check, cargo clippy (warnings are errors)"
cargo fmt --all -- --check
cargo clippy --features pg15 --workspace --all-targets -- -D warnings

section "layers 1+2: unit tests and #[pg_test]s"
install -d -o postgres -g postgres /tmp/billing-pgrx-test
USER=root cargo pgrx test pg15 --runas postgres --pgdata /tmp/billing-pgrx-test

section "installing the extension for the cluster tests"
./scripts/install-ext.sh

source scripts/cluster.sh
trap cluster_stop EXIT
cluster_start "$TEST_PORT" max_connections=200

section "layer 3: isolation specs"
./scripts/isolation.sh

section "layer 3: client-side integration tests (pgrx-tests/)"
export DATABASE_URL="host=$PGHOST port=$PGPORT user=postgres dbname=postgres"
# (the fault test restarts the server: it runs alone, below)
cargo test -p billing-it -- --test-threads=4 --skip under_faults

section "layer 3: the example webhook receiver over HTTP"
./scripts/receiver-test.sh

section "layer 3: reconciliation: scripts/stripe-sync.py against a Stripe stand-in"
./scripts/sync-test.sh

section "layer 4: faults (kills and crashes under load)"
export CLUSTER_DIR; cargo test -p billing-it --test faults -- --nocapture

section "upgrade scripts"
./scripts/check-upgrade.sh

section "all test layers passed"
