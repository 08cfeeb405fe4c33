#!/usr/bin/env bash
# Debit on a Citus cluster against the same debit on one server, same machine, side by
# side (issue 19): a coordinator and two workers on loopback (scripts/citus-cluster.sh)
# and a single PostgreSQL 15 with the same settings, each with 10,000 customers of three
# grants; pgbench -M prepared runs bench/debit_ext.sql (uniform debit, a fresh key per
# call) against the coordinator (the call is delegated whole to the customer's worker)
# and against the single server, in alternating order, ROUNDS times.
#   bench/citus.sh                 ROUNDS [5]  DURATION [10]  CLIENTS [8]
# Not part of the test command. Needs Citus (scripts/citus.sh) and the release build
# installed (SKIP_INSTALL=1 to keep what is installed). Prints medians and the ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}; DURATION=${DURATION:-10}; CLIENTS=${CLIENTS:-8}
PGBIN=/usr/lib/postgresql/15/bin
PG_CONFIG=$PGBIN/pg_config ./scripts/citus.sh
[ "${SKIP_INSTALL:-}" = 1 ] || ./scripts/install-ext.sh --release >&2
source scripts/cluster.sh
source scripts/citus-cluster.sh
cleanup() { citus_cluster_stop; cluster_stop; }
trap cleanup EXIT

seed="CREATE EXTENSION billing;
SELECT count(*) FROM generate_series(1, 10000) i,
  LATERAL (VALUES (billing.grant('c' || i, 1000000000000, 'seed:' || i || ':purchase', 'purchase')),
                  (billing.grant('c' || i, 1000000, 'seed:' || i || ':promo', 'promotion', '2099-01-01', 10)),
                  (billing.grant('c' || i, 1000000, 'seed:' || i || ':plan', 'plan:pro', '2098-01-01', 0))) g(id);"

citus_cluster_start 54370 bench
citus_host=$CITUS_DIR
psql -X -q -p 54370 -d bench -v ON_ERROR_STOP=1 -c "CREATE EXTENSION billing" -c "SELECT billing.distribute()" \
  -c "$(echo "$seed" | sed 1d)" >/dev/null
cluster_start 54375 shared_buffers=128MB max_connections=200
single_host=$CLUSTER_DIR
psql -X -q -p 54375 -d postgres -c "CREATE DATABASE bench" >/dev/null
psql -X -q -p 54375 -d bench -v ON_ERROR_STOP=1 -c "$seed" >/dev/null

run() {  # run <host> <port> <round>: tps
  runuser -u postgres -- "$PGBIN/pgbench" -h "$1" -p "$2" -n -M prepared -c "$CLIENTS" -j "$CLIENTS" -T "$DURATION" \
    -D run="$3" -D k=0 -D ncust=10000 -f bench/debit_ext.sql bench 2>/dev/null | sed -n 's/^tps = \([0-9.]*\).*/\1/p'
}
c=(); s=()
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then
    c+=("$(run "$citus_host" 54370 "$r")"); s+=("$(run "$single_host" 54375 $((r + 100)))")
  else
    s+=("$(run "$single_host" 54375 $((r + 100)))"); c+=("$(run "$citus_host" 54370 "$r")")
  fi
  echo "round $r: citus coordinator ${c[-1]} tps, single server ${s[-1]} tps" >&2
done
python3 - "${c[*]}" "${s[*]}" "$CLIENTS" <<'PY'
import statistics, sys
c = [float(x) for x in sys.argv[1].split()]; s = [float(x) for x in sys.argv[2].split()]
mc, ms = statistics.median(c), statistics.median(s)
print(f"uniform debit, {sys.argv[3]} clients: Citus (coordinator, delegated) {mc:,.0f} tps, single server {ms:,.0f} tps, ratio {mc / ms:.2f}x")
PY
