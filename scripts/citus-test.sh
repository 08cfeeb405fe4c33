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
# Rows made before distribute() move into the shards with it.
q -c "CREATE EXTENSION billing" \
  -c "SELECT billing.grant('before' || i, 100, 'g') FROM generate_series(1, 20) i" \
  -c "SELECT (billing.debit('before' || i, 10, 'd')).balance_after FROM generate_series(1, 20) i" >/dev/null
q -c "SELECT billing.distribute()" -c "SELECT billing.distribute()"   # twice: idempotent
check() {  # check <db> <port> <what> <sql> <expected>
  local got; got=$(psql -X -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$2" -d "$1" -c "$4")
  [ "$got" = "$5" ] || { echo "citus layer: $3: got '$got', expected '$5'" >&2; exit 1; }
  echo "citus layer: $3: ok"
}
w1=$((PORT + 1)); w2=$((PORT + 2))
check billing_citus "$w1" "rows made before distribute() are in the shards" \
  "SELECT sum(billing.balance('before' || i)) FROM generate_series(1, 20) i" 1800

# A database of the last release, with data, upgraded in place, then distributed.
SHAREDIR=$("$PGBIN/pg_config" --sharedir)/extension
last=$(awk '$1 !~ /^#/ && NF == 2 { v = $1; c = $2 } END { print v " " c }' sql/releases)
set -- $last
if [ ! -f "$SHAREDIR/billing--$1.sql" ]; then
  git show "$2:sql/archive/billing--$1.sql" >"$SHAREDIR/billing--$1.sql.tmp.$$" && mv -f "$SHAREDIR/billing--$1.sql.tmp.$$" "$SHAREDIR/billing--$1.sql"
fi
for port in $CITUS_PORTS; do
  psql -X -q -h 127.0.0.1 -p "$port" -d postgres -c "CREATE DATABASE billing_upgraded" && \
  psql -X -q -h 127.0.0.1 -p "$port" -d billing_upgraded -c "CREATE EXTENSION citus"
done
u() { psql -X -q -v ON_ERROR_STOP=1 -d billing_upgraded "$@" >/dev/null; }
u -c "SELECT citus_set_coordinator_host('127.0.0.1', $PORT)" -c "SELECT citus_add_node('127.0.0.1', $w1)" -c "SELECT citus_add_node('127.0.0.1', $w2)"
u -c "CREATE EXTENSION billing VERSION '$1'" \
  -c "SELECT billing.grant('old' || i, 1000, 'g') FROM generate_series(1, 10) i" \
  -c "SELECT billing.debit('old' || i, 100, 'd') FROM generate_series(1, 10) i" \
  -c "SELECT billing.reserve('old1', 50, 'r')"
u -c "ALTER EXTENSION billing UPDATE" -c "SELECT billing.distribute()"
check billing_upgraded "$w2" "$1 upgraded in place, then distributed: a debit on a worker" \
  "SELECT balance_after FROM billing.debit('old2', 5, 'after')" 895
check billing_upgraded "$PORT" "... settle of a hold made before, by the customer" \
  "SELECT balance_after FROM billing.settle('old1', (SELECT id FROM billing.reservations WHERE customer = 'old1'), 20)" 880
check billing_upgraded "$PORT" "... verify() over the shards" "SELECT count(*) FROM billing.verify()" 0
echo "citus layer: $(q -At -c "SELECT count(*) FROM pg_dist_partition WHERE logicalrelid::text LIKE 'billing.%'") billing tables distributed on a coordinator and 2 workers"
CITUS_PORTS="$CITUS_PORTS" CITUS_DB=billing_citus cargo test -p billing-it --test citus -- --ignored --nocapture --test-threads=1
