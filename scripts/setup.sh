#!/usr/bin/env bash
# The main job, for a fresh Debian machine: install what is missing, build the extension
# (release), install it into PostgreSQL 15, start a local throwaway cluster, CREATE
# EXTENSION billing, and run the demo. Safe to run again: it replaces the previous
# demo cluster. The cluster keeps running so you can connect; the last lines say how.
set -euo pipefail
cd "$(dirname "$0")/.."
export PGRX_HOME=${PGRX_HOME:-$HOME/.pgrx}
DEMO_PORT=${DEMO_PORT:-54321}
STATE=/tmp/billing-demo.env

./scripts/bootstrap.sh

echo "setup: building and installing the extension (release)"
./scripts/install-ext.sh --release

source scripts/cluster.sh
if [ -f "$STATE" ]; then   # a previous run's cluster
  # shellcheck disable=SC1090
  (source "$STATE"; cluster_stop) || true
  rm -f "$STATE"
fi
cluster_start "$DEMO_PORT"
echo "CLUSTER_DIR=$CLUSTER_DIR" > "$STATE"

psql -X -q -v ON_ERROR_STOP=1 -d postgres -c "CREATE DATABASE billing_demo"
psql -X -q -v ON_ERROR_STOP=1 -d billing_demo -c "CREATE EXTENSION billing"
psql -X -v ON_ERROR_STOP=1 -d billing_demo -f scripts/demo.sql
./scripts/demo-sync.sh billing_demo

cat <<MSG

The demo cluster is running (PostgreSQL 15, database billing_demo, extension billing).
  connect:  psql -h $CLUSTER_DIR -p $DEMO_PORT -U postgres billing_demo
  stop:     runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl stop -D $CLUSTER_DIR/data
MSG
