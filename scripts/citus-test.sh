#!/usr/bin/env bash
# The Citus layer of the test command: the extension on a coordinator and two workers
# (loopback), distributed with billing.distribute(), exercised by pgrx-tests/tests/citus.rs:
# every function through the coordinator and the workers, in and out of transaction
# blocks, races across nodes, single-shard routing of the hot path, verify() over shards.
# Citus comes from scripts/citus.sh (installed, or built from ../shared/deps). Without
# either, prints one line saying the layer was skipped and why, and exits 0; with
# CITUS_REQUIRED=1 (CI, which has ../shared) that is a failure instead.
# Needs the extension installed for PostgreSQL 15 (scripts/install-ext.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PORT=${CITUS_TEST_PORT:-54360}

set +e
PG_CONFIG=$PGBIN/pg_config ./scripts/citus.sh
rc=$?
set -e
if [ $rc = 3 ]; then
  if [ "${CITUS_REQUIRED:-0}" = 1 ]; then
    echo "citus layer: Citus is neither installed nor buildable here, and CITUS_REQUIRED=1" >&2
    exit 1
  fi
  echo "citus layer: SKIPPED (no Citus installed and no ../shared/deps/citus-13.2.2.tar.gz to build it from)"
  exit 0
fi
[ $rc = 0 ] || exit $rc

source scripts/citus-cluster.sh
trap citus_cluster_stop EXIT
citus_cluster_start "$PORT" billing_citus
q() { psql -X -q -v ON_ERROR_STOP=1 -d billing_citus "$@"; }
q -c "CREATE EXTENSION billing" -c "SELECT billing.distribute()" -c "SELECT billing.distribute()"   # twice: idempotent
echo "citus layer: $(q -At -c "SELECT count(*) FROM pg_dist_partition WHERE logicalrelid::text LIKE 'billing.%'") billing tables distributed on a coordinator and 2 workers"
CITUS_PORTS="$CITUS_PORTS" CITUS_DB=billing_citus cargo test -p billing-it --test citus -- --ignored --nocapture --test-threads=1
