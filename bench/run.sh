#!/usr/bin/env bash
# The benchmark suite (issue 6): billing against its peers, interleaved, in one run.
#   bench/run.sh
# Environment (defaults in brackets):
#   ROUNDS [5]        rounds; each round runs every contender of a workload once (A B C, then B C A, ...)
#   DURATION [7]      seconds per pgbench run
#   WORKLOADS         subset of: debit8 debit32 hot8 hot64 rs usage ingest access rls batch100 batch1000 [all]
#                     (batchN: debit_many / record_usage_many of N items, reported in items per
#                     second against debit8's floor: run it with debit8)
#   LOOP_CALLS [1000000]  calls in the can_access loop;  LOOP_REPS [1]
#   BENCH_PORT [54990]    port of the throwaway cluster;  SHARED_BUFFERS [2GB]
#   QUIET_WAIT [0]    before each run, wait up to this many seconds for a second in which other
#                     processes use < 0.2 s of CPU (the machine may be shared with builds)
#   SKIP_INSTALL=1    use the build already installed (default: scripts/install-ext.sh --release)
#   PGBIN             the server's bin folder [/usr/lib/postgresql/15/bin]: installs into and runs
#                     the PostgreSQL 15 there
#   BENCH_OUT         also write the report to this file
#   BENCH_KEEP [/tmp/billing-bench-last]  raw pgbench outputs, pg_waldump --stats per run
# Needs root (the cluster runs as the postgres OS user), pgbench, python3. See bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-7}
WORKLOADS=${WORKLOADS:-"debit8 debit32 hot8 hot64 rs usage ingest access rls batch100 batch1000"}
LOOP_CALLS=${LOOP_CALLS:-1000000}
LOOP_REPS=${LOOP_REPS:-1}
PORT=${BENCH_PORT:-54990}
QUIET_WAIT=${QUIET_WAIT:-0}
SHARED_BUFFERS=${SHARED_BUFFERS:-2GB}
CUSTOMERS=10000
T_START=$(date +%s)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ---- build and install (release), then a cluster of our own ----
# PGBIN: the server's bin folder (default the system's PostgreSQL 15; a private copy of it
# keeps the install away from the system's dirs: scripts/install-ext.sh installs there too)
export PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PKG=$ROOT/target/release/billing-pg15
if [ "${SKIP_INSTALL:-}" != 1 ]; then
  log "building and installing the release build (scripts/install-ext.sh --release)"
  ./scripts/install-ext.sh --release >&2
fi
LIBDIR=$("$PGBIN/pg_config" --pkglibdir)
SHAREDIR=$("$PGBIN/pg_config" --sharedir)
SO_BUILT=$(md5sum <"$PKG$LIBDIR/billing.so" | cut -c1-32)

source scripts/cluster.sh
WORK=$(mktemp -d /tmp/bench.XXXXXX)
chmod 755 "$WORK"
KEEP=${BENCH_KEEP:-/tmp/billing-bench-last}   # raw pgbench outputs and WAL breakdowns of the last run
rm -rf "$KEEP"; mkdir -p "$KEEP"; chmod 777 "$KEEP"
cleanup() { cluster_stop; rm -rf "$WORK"; }
trap cleanup EXIT
# billing.so is preloaded: the postmaster maps it once and every backend inherits it, so a
# concurrent install of another build (the test command installs a debug build) cannot
# change what is measured mid-run.
cluster_start "$PORT" shared_buffers="$SHARED_BUFFERS" max_connections=150 max_wal_size=32GB \
  checkpoint_timeout=1h shared_preload_libraries=billing log_min_messages=warning \
  log_checkpoints=off
export PGDATABASE=bench
PM=$(head -1 "$CLUSTER_DIR/data/postmaster.pid")
SO_RUN=$(md5sum <"$LIBDIR/billing.so" | cut -c1-32)
[ "$SO_BUILT" = "$SO_RUN" ] || { echo "billing.so changed under us (another install?): rerun" >&2; exit 1; }

q() { psql -X -qAt -v ON_ERROR_STOP=1 "$@"; }
q -d postgres -c "CREATE DATABASE bench"
log "creating the data (10,000 customers x 3 grants, 5,000 subscriptions via ingest, peers)"
q -f bench/peers.sql >/dev/null
q -f bench/setup.sql >/dev/null
q -c CHECKPOINT
EXTVER=$(q -c "SELECT extversion FROM pg_extension WHERE extname = 'billing'")
SQL_OK=$(cmp -s "$PKG$SHAREDIR/extension/billing--$EXTVER.sql" \
              "$SHAREDIR/extension/billing--$EXTVER.sql" && echo same || echo DIFFERENT)
REV=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src sql Cargo.toml 2>/dev/null || echo "+dirty")

# ---- one pgbench run ----
RUN=0
RESULTS=$WORK/results.tsv
declare -A POOL_NEXT   # webhook deliveries to precompute for the next run of a contender
run_one() {   # workload contender script clients ncust user round
  local w=$1 c=$2 script=${3%%,*} clients=$4 ncust=$5 user=$6 round=$7 pool=0 status=ok
  local vars=() v x
  if [[ $3 == *,* ]]; then IFS=, read -r -a v <<<"${3#*,}"; for x in "${v[@]}"; do vars+=(-D "$x"); done; fi
  RUN=$((RUN + 1))
  if [ "$w" = ingest ]; then
    local rate=8000; [ "$c" = floor ] && rate=20000   # first guess (0.7.0 ran ~4,000 and ~12,000 tps here); then twice what the last run used
    pool=${POOL_NEXT[$c]:-$((DURATION * rate))}
    q -c "SELECT bench.gen_deliveries('r$RUN', $pool)" >/dev/null
  fi
  q -c CHECKPOINT
  local lsn0 lsn1 out=$WORK/out.$RUN threads=2
  [ "$clients" -lt 2 ] && threads=1
  if [ "$QUIET_WAIT" -gt 0 ]; then   # wait (bounded) for a second in which other processes are idle
    local waited=0 busy
    while [ "$waited" -lt "$QUIET_WAIT" ]; do
      python3 bench/cpu.py snap "$PM" >"$WORK/cpu.q0"; sleep 1; python3 bench/cpu.py snap "$PM" >"$WORK/cpu.q1"
      busy=$(python3 bench/cpu.py diff "$WORK/cpu.q0" "$WORK/cpu.q1" | cut -f1)
      awk -v b="$busy" 'BEGIN {exit !(b < 0.2)}' && break
      waited=$((waited + 1))
    done
  fi
  python3 bench/cpu.py snap "$PM" >"$WORK/cpu.0"
  lsn0=$(q -c "SELECT pg_current_wal_lsn()")
  pgbench -n -M prepared -c "$clients" -j "$threads" -T "$DURATION" -U "$user" \
    -D run="$RUN" -D k=0 -D ncust="$ncust" "${vars[@]}" -l --log-prefix="$WORK/lat.$RUN" \
    -f "bench/$script.sql" bench >"$out" 2>&1 || status=error
  lsn1=$(q -c "SELECT pg_current_wal_lsn()")
  python3 bench/cpu.py snap "$PM" >"$WORK/cpu.1"
  local other; other=$(python3 bench/cpu.py diff "$WORK/cpu.0" "$WORK/cpu.1")
  local tps txns wal lat fpi
  tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p' "$out")
  txns=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out")
  grep -q "aborted" "$out" && status=error
  if [ "$w" = ingest ]; then
    local used; used=$(q -c "SELECT last_value FROM bench.deliv_seq")
    [ "$used" -gt "$pool" ] && status="pool-exhausted($used>$pool)"
    POOL_NEXT[$c]=$(( used * 2 + 2000 ))   # rounds of one contender differ by up to 2x here
  fi
  wal=$(q -c "SELECT pg_wal_lsn_diff('$lsn1', '$lsn0')")
  # the same WAL split into record bytes and full-page images (what the checkpoint before
  # the run makes the first touch of each page pay)
  as_pg "$PGBIN/pg_waldump" --stats=record -p "$CLUSTER_DIR/data/pg_wal" -s "$lsn0" -e "$lsn1" \
    >"$KEEP/waldump.$RUN.$w.$c.txt" 2>&1 || true
  fpi=$(awk '$1 == "Total" {print $5}' "$KEEP/waldump.$RUN.$w.$c.txt")
  cp "$out" "$KEEP/pgbench.$RUN.$w.$c.txt"
  lat=$(cat "$WORK"/lat."$RUN".* | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END {
          if (NR == 0) { print "NA\tNA"; exit }
          i50 = int(NR * 0.50); if (i50 < 1) i50 = 1; i99 = int(NR * 0.99); if (i99 < 1) i99 = 1;
          printf "%.3f\t%.3f\n", a[i50] / 1000, a[i99] / 1000 }')
  rm -f "$WORK"/lat."$RUN".*
  if [ "$status" != ok ]; then log "  $w $c: $status"; sed -n '1,5p;/aborted/p' "$out" | head -8 >&2; fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$w" "$c" "$round" "${tps:-0}" "${txns:-0}" "$lat" "$wal" "${fpi:-0}" "$status" "$other" >>"$RESULTS"
  log "  $w round $round $c: ${tps:-0} tps (CPU of other processes: ${other%%$'\t'*} s)"
}

# workload -> "clients ncust user | contender:script[,var=value...] ..." (each var=value
# is passed to pgbench as -D var=value)
declare -A WL=(
  [debit8]="8 $CUSTOMERS postgres | billing:debit_ext floor:debit_floor floor_fn:debit_floor_fn plpgsql:debit_plpgsql"
  [debit32]="32 $CUSTOMERS postgres | billing:debit_ext floor:debit_floor plpgsql:debit_plpgsql"
  [hot8]="8 1 postgres | billing:debit_ext slotted:debit_slots,acct=hot slotted64:debit_slots,acct=hot64 floor:debit_floor plpgsql:debit_plpgsql"
  [hot64]="64 1 postgres | billing:debit_ext slotted:debit_slots,acct=hot slotted64:debit_slots,acct=hot64 floor:debit_floor plpgsql:debit_plpgsql"
  [rs]="8 $CUSTOMERS postgres | billing:rs_ext floor:rs_floor plpgsql:rs_plpgsql"
  [usage]="8 $CUSTOMERS postgres | billing:usage_ext floor:usage_floor plpgsql:usage_plpgsql"
  [ingest]="8 0 postgres | billing:ingest_ext inbox:ingest_inbox floor:ingest_floor plpgsql:ingest_plpgsql"
  [access]="8 $CUSTOMERS postgres | billing:access_ext floor:access_floor plpgsql:access_plpgsql"
  [rls]="8 $CUSTOMERS bench_app | billing:rls_ext floor:rls_floor plpgsql:rls_plpgsql"
  [batch100]="8 $CUSTOMERS postgres | billing:batch_ext,n=100 usage:batch_usage_ext,n=100 plpgsql:batch_plpgsql,n=100"
  [batch1000]="8 $CUSTOMERS postgres | billing:batch_ext,n=1000 usage:batch_usage_ext,n=1000 plpgsql:batch_plpgsql,n=1000"
)
for w in $WORKLOADS; do
  spec=${WL[$w]:?unknown workload $w}
  read -r clients ncust user <<<"${spec%%|*}"
  read -r -a cs <<<"${spec#*|}"
  log "workload $w: ${#cs[@]} contenders x $ROUNDS rounds x ${DURATION}s, $clients clients"
  for ((r = 0; r < ROUNDS; r++)); do
    for ((i = 0; i < ${#cs[@]}; i++)); do
      cs_i=${cs[$(((i + r) % ${#cs[@]}))]}
      run_one "$w" "${cs_i%%:*}" "${cs_i#*:}" "$clients" "$ncust" "$user" $((r + 1))
    done
  done
done

# ---- can_access: microseconds per call in a loop ----
LOOPS=$WORK/loops.tsv
: >"$LOOPS"
if [ "$LOOP_CALLS" -gt 0 ]; then
  log "can_access loop: $LOOP_CALLS calls x $LOOP_REPS reps"
  one_c1="CASE WHEN g > 0 THEN 'c1' END"             # one customer (c1: subscription + credits); not folded
  rot="'c' || (g % $CUSTOMERS + 1)"                  # all 10,000 customers in turn
  declare -A LQ=(
    [base_one]="($one_c1) IS NOT NULL"
    [can_access_one]="billing.can_access($one_c1)"
    [base_rot]="($rot) IS NOT NULL"
    [can_access_rot]="billing.can_access($rot)"
    [plpgsql_rot]="peer.pl_can_access($rot)"
  )
  for ((r = 0; r < LOOP_REPS; r++)); do
    for k in base_one can_access_one base_rot can_access_rot plpgsql_rot; do
      ms=$(psql -X -At -v ON_ERROR_STOP=1 -c '\timing on' \
             -c "SELECT count(*) FROM generate_series(1, $LOOP_CALLS) g WHERE ${LQ[$k]}" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p')
      printf '%s\t%s\n' "$k" "$ms" >>"$LOOPS"
    done
  done
fi

# ---- sanity: what the ingest runs produced, and the ledger still adds up ----
SANITY=$WORK/sanity.txt
{
  echo "billing.events by status: $(q -c "SELECT string_agg(status || '=' || n, ' ') FROM (SELECT status, count(*) n FROM billing.events GROUP BY 1 ORDER BY 1) s")"
  echo "peer.pl_events by status: $(q -c "SELECT coalesce(string_agg(status || '=' || n, ' '), '-') FROM (SELECT status, count(*) n FROM peer.pl_events GROUP BY 1 ORDER BY 1) s")"
  echo "journal rows: $(q -c "SELECT count(*) FROM billing.journal"); billing.verify() problems: $(q -c "SELECT count(*) FROM billing.verify()")"
  echo "peer accounts whose balance is not their open grants' remainders: $(q -c "SELECT count(*) FROM peer.pl_accounts a WHERE a.balance <> coalesce((SELECT sum(g.remaining) FROM peer.pl_grants g WHERE g.customer = a.id AND g.open), 0)")"
} >"$SANITY" 2>&1 || true

T_END=$(date +%s)
export ROUNDS DURATION CUSTOMERS EXTVER REV SQL_OK SHARED_BUFFERS LOOP_CALLS
export ELAPSED=$((T_END - T_START)) MACHINE="$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GB", $2/1048576}' /proc/meminfo), $(uname -r), $(pgbench --version | awk '{print $3}')"
cp "$RESULTS" "$LOOPS" "$SANITY" "$KEEP/"
REPORT=$(python3 bench/report.py "$RESULTS" "$LOOPS" "$SANITY")
echo "$REPORT"
[ -n "${BENCH_OUT:-}" ] && echo "$REPORT" >"$BENCH_OUT"
exit 0
