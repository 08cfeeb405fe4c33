#!/usr/bin/env bash
# Instructions per call of each contender, counted by callgrind in a single-user backend:
# the same numbers on a busy machine and a quiet one, so a change of a few percent shows
# where pgbench's rounds (10-15% apart on 2 shared cores) cannot. Complements run.sh, which
# measures what the instructions turn into (tps, latency, WAL) under concurrency.
#   bench/instructions.sh                       # every workload, installed build
#   WORKLOADS="debit usage" CALLS=500 bench/instructions.sh
# Environment: WORKLOADS (debit usage access ingest reserve settle), CALLS [1000] counted calls per run,
#   WARM [300] calls before them (plans and caches warm), SKIP_INSTALL=1 to use the build
#   already installed (default: scripts/install-ext.sh --release), KEEP_DATA=dir to reuse
#   a data directory made by an earlier run (same data, faster), BENCH_OUT to save the report,
#   CLUSTER_LOCALE to make the data in a cluster of that locale (default C: no locale;
#   a locale the machine lacks, e.g. en_US.UTF-8 on a fresh Debian, is generated first),
#   PGBIN to use another PostgreSQL 15 than the system's (a private install, with SKIP_INSTALL=1).
# Each contender runs twice, each time on a fresh copy of the same data: WARM calls, then WARM + CALLS;
# the difference over CALLS is its cost per call. Both runs pay the backend start, so it
# cancels. Statements go through PREPARE/EXECUTE, as pgbench -M prepared sends them; the
# EXECUTE itself (~35,000 instructions with its commit) is in every contender's count.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORKLOADS=${WORKLOADS:-"debit usage access ingest reserve settle"}
CALLS=${CALLS:-1000}
WARM=${WARM:-300}
if ! command -v valgrind >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends valgrind >/dev/null
fi
if [ "${SKIP_INSTALL:-}" != 1 ]; then ./scripts/install-ext.sh --release >&2; fi
source scripts/cluster.sh
[ -z "${CLUSTER_LOCALE:-}" ] || ensure_locale "$CLUSTER_LOCALE"   # also when KEEP_DATA reuses a cluster made elsewhere
WORK=$(mktemp -d /tmp/instr.XXXXXX); chmod 777 "$WORK"   # the backend (postgres) writes its profile here
trap 'cluster_stop; rm -rf "$WORK"' EXIT
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ---- the data: bench/setup.sql, then every journal and key table seeded, so plans are
# the ones a running system has (a generic plan made on an empty journal scans it) ----
if [ -n "${KEEP_DATA:-}" ] && [ -d "$KEEP_DATA/data" ]; then
  DATA=$KEEP_DATA/data
else
  log "creating the data (bench/peers.sql, bench/setup.sql, 20,000 seed calls per contender)"
  cluster_start 54993 shared_buffers=512MB max_wal_size=8GB
  export PGDATABASE=postgres
  psql -X -qAt -c "CREATE DATABASE bench"
  export PGDATABASE=bench
  psql -X -qAt -v ON_ERROR_STOP=1 -f bench/peers.sql >/dev/null
  psql -X -qAt -v ON_ERROR_STOP=1 -f bench/setup.sql >/dev/null
  psql -X -qAt -v ON_ERROR_STOP=1 >/dev/null <<SQL
SELECT count(*) FROM generate_series(1, 20000) i, LATERAL billing.debit('c' || (i % 10000 + 1), 1, 'seed' || i);
SELECT count(*) FROM generate_series(1, 20000) i, LATERAL peer.pl_debit('c' || (i % 10000 + 1), 1, 'seed' || i);
SELECT count(*) FROM generate_series(1, 20000) i, LATERAL billing.record_usage('c' || (i % 10000 + 1), 'llm_tokens', 2500, 'useed' || i);
SELECT count(*) FROM generate_series(1, 20000) i, LATERAL peer.pl_record_usage('c' || (i % 10000 + 1), 'llm_tokens', 2500, 'useed' || i);
WITH u AS (UPDATE peer.floor_accounts SET balance = balance - 1, seq = seq + 1 RETURNING id, seq, balance),
     j AS (INSERT INTO peer.floor_journal (customer, seq, kind, amount, balance_after) SELECT id, seq, 'debit', -1, balance FROM u)
INSERT INTO peer.floor_keys (customer, key, seq) SELECT id, 'seed' || seq, seq FROM u;
VACUUM ANALYZE;
CHECKPOINT;
SQL
  as_pg "$PGBIN/pg_ctl" stop -m fast -D "$CLUSTER_DIR/data" >/dev/null
  DATA=$CLUSTER_DIR/data
  if [ -n "${KEEP_DATA:-}" ]; then mkdir -p "$KEEP_DATA"; rm -rf "$KEEP_DATA/data"; cp -a "$DATA" "$KEEP_DATA/"; DATA=$KEEP_DATA/data; fi
fi

# ---- one contender: the PREPARE, and the EXECUTE of call i (i, c: customer, k: key) ----
prep() {   # contender -> PREPARE statement
  case $1 in
    debit.billing) echo "PREPARE s(int) AS SELECT * FROM billing.debit('c' || (\$1 % 10000 + 1), 1, 'k' || \$1)" ;;
    debit.slotted) echo "PREPARE s(int) AS SELECT * FROM billing.debit('hot', 1, 'k' || \$1)" ;;
    debit.floor) echo "PREPARE s(int) AS WITH u AS (UPDATE peer.floor_accounts SET balance = balance - 1, seq = seq + 1 WHERE id = 'c' || (\$1 % 10000 + 1) AND balance >= 1 RETURNING id, seq, balance), j AS (INSERT INTO peer.floor_journal (customer, seq, kind, amount, balance_after) SELECT id, seq, 'debit', -1, balance FROM u) INSERT INTO peer.floor_keys (customer, key, seq) SELECT id, 'k' || \$1, seq FROM u" ;;
    debit.plpgsql) echo "PREPARE s(int) AS SELECT * FROM peer.pl_debit('c' || (\$1 % 10000 + 1), 1, 'k' || \$1)" ;;
    debit.floor_fn) echo "PREPARE s(int) AS SELECT peer.floor_fn('c' || (\$1 % 10000 + 1), 1, 'k' || \$1)" ;;
    usage.billing) echo "PREPARE s(int) AS SELECT credits FROM billing.record_usage('c' || (\$1 % 10000 + 1), 'llm_tokens', 2500, 'u' || \$1)" ;;
    usage.floor) echo "PREPARE s(int) AS WITH u AS (UPDATE peer.floor_accounts SET balance = balance - 7, seq = seq + 1 WHERE id = 'c' || (\$1 % 10000 + 1) AND balance >= 7 RETURNING id, seq, balance), j AS (INSERT INTO peer.floor_journal (customer, seq, kind, amount, balance_after) SELECT id, seq, 'debit', -7, balance FROM u) INSERT INTO peer.floor_usage (customer, key, meter, quantity, credits, seq) SELECT id, 'u' || \$1, 'llm_tokens', 2500, 7, seq FROM u" ;;
    usage.plpgsql) echo "PREPARE s(int) AS SELECT credits FROM peer.pl_record_usage('c' || (\$1 % 10000 + 1), 'llm_tokens', 2500, 'u' || \$1)" ;;
    access.billing) echo "PREPARE s(int) AS SELECT billing.can_access('c' || (\$1 % 10000 + 1))" ;;
    access.floor) echo "PREPARE s(int) AS $(sed -n '/^SELECT NOT/,$p' bench/access_floor.sql | tr '\n' ' ' | sed "s/'c' || :cid::text/'c' || (\$1 % 10000 + 1)/; s/;[[:space:]]*$//")" ;;
    access.plpgsql) echo "PREPARE s(int) AS SELECT peer.pl_can_access('c' || (\$1 % 10000 + 1))" ;;
    # ingest: deliveries 1.. of the run's own bench.deliv (see count)
    ingest.billing) echo "PREPARE s(int) AS SELECT r.status FROM bench.deliv d, billing.ingest('stripe-bench', d.headers, d.body) r WHERE d.n = \$1" ;;
    ingest.floor) echo "PREPARE s(int) AS INSERT INTO peer.floor_events (event_id, headers, body) SELECT d.event_id, d.headers, d.body FROM bench.deliv d WHERE d.n = \$1 ON CONFLICT (event_id) DO NOTHING" ;;
    ingest.plpgsql) echo "PREPARE s(int) AS SELECT peer.pl_ingest('stripe-bench', d.headers, d.body) FROM bench.deliv d WHERE d.n = \$1" ;;
    # reserve, settle: a hold of 100, then (of holds made before the run, bench.holds) a settle of 37
    reserve.billing) echo "PREPARE s(int) AS SELECT billing.reserve('c' || (\$1 % 10000 + 1), 100, 'r' || \$1)" ;;
    reserve.plpgsql) echo "PREPARE s(int) AS SELECT peer.pl_reserve('c' || (\$1 % 10000 + 1), 100, 'r' || \$1)" ;;
    settle.billing) echo "PREPARE s(int) AS SELECT entry_id FROM billing.settle((SELECT id FROM bench.holds WHERE n = \$1), 37)" ;;
    settle.plpgsql) echo "PREPARE s(int) AS SELECT entry_id FROM peer.pl_settle((SELECT id FROM bench.holds WHERE n = \$1), 37)" ;;
    *) echo "unknown contender $1" >&2; return 1 ;;
  esac
}
declare -A CONTENDERS=([debit]="billing floor floor_fn plpgsql slotted" [usage]="billing floor plpgsql" [access]="billing floor plpgsql" [ingest]="billing floor plpgsql"
                       [reserve]="billing plpgsql" [settle]="billing plpgsql")

count() {   # contender calls -> instructions of a backend that runs WARM + calls calls
  local c=$1 n=$2 in=$WORK/in.sql out=$WORK/cg.out
  rm -rf "$WORK/d"; cp -a "$DATA" "$WORK/d"; chown -R postgres:postgres "$WORK/d"
  local gen=""
  # Deliveries are signed when made, and a signature is good for 300 s: each ingest run
  # makes its own, as many in both runs of a contender, so their cost cancels.
  [ "${c%%.*}" = ingest ] && gen="SELECT bench.gen_deliveries('instr', $((WARM + CALLS)))"
  # The holds a settle run settles, made by the same contender's reserve, as many in both runs.
  local holder=billing.reserve; [ "$c" = settle.plpgsql ] && holder=peer.pl_reserve
  [ "${c%%.*}" = settle ] && gen="CREATE TABLE bench.holds AS SELECT n, $holder('c' || (n % 10000 + 1), 100, 'h' || n) AS id FROM generate_series(1, $((WARM + CALLS))) n; CREATE UNIQUE INDEX ON bench.holds (n); ANALYZE bench.holds;"
  { echo "$gen"; prep "$c"; seq 1 $((WARM + n)) | sed 's/.*/EXECUTE s(&);/'; } >"$in"
  as_pg valgrind --tool=callgrind --callgrind-out-file="$out" "$PGBIN/postgres" --single -D "$WORK/d" \
    -c fsync=off -c synchronous_commit=off -c autovacuum=off bench <"$in" >"$WORK/log" 2>&1
  if grep -q "ERROR" "$WORK/log"; then grep -m3 ERROR "$WORK/log" >&2; echo "errors in $c" >&2; return 1; fi
  local n; n=$(sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$WORK/log" | head -1)
  [ -n "$n" ] || { tail -5 "$WORK/log" >&2; echo "callgrind counted nothing for $c" >&2; return 1; }
  echo "$n"
}

RES=$WORK/res.tsv; : >"$RES"
for w in $WORKLOADS; do
  for c in ${CONTENDERS[$w]:?unknown workload $w}; do
    a=$(count "$w.$c" 0); b=$(count "$w.$c" "$CALLS")
    per=$(( (b - a) / CALLS ))
    printf '%s\t%s\t%s\n' "$w" "$c" "$per" >>"$RES"
    log "$w $c: $per instructions per call"
  done
done

REV=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src sql Cargo.toml 2>/dev/null || echo "+dirty")
REPORT=$(python3 - "$RES" "$REV" "$CALLS" "$WARM" <<'PY'
import sys, csv
res, rev, calls, warm = sys.argv[1:5]
rows = [r for r in csv.reader(open(res), delimiter='\t')]
by = {(w, c): int(n) for w, c, n in rows}
import os
loc = os.environ.get("CLUSTER_LOCALE") or "C"
print(f"Instructions per call (callgrind, single-user backend, {calls} calls after {warm}, locale {loc}), billing git {rev}\n")
print("| workload | contender | instructions per call | vs floor | vs PL/pgSQL |")
print("|---|---|---:|---:|---:|")
for (w, c), n in by.items():
    f, p = by.get((w, 'floor')), by.get((w, 'plpgsql'))
    # fewer instructions is better: the ratio is the other's count over this one's
    vf = f"{f / n:.2f}x" if f and c != 'floor' else "–"
    vp = f"{p / n:.2f}x" if p and c not in ('plpgsql', 'floor') else "–"
    print(f"| {w} | {c} | {n:,} | {vf} | {vp} |")
print("\nA ratio above 1 means this contender needs fewer instructions than that peer.")
PY
)
echo "$REPORT"
[ -n "${BENCH_OUT:-}" ] && echo "$REPORT" >"$BENCH_OUT"
exit 0
