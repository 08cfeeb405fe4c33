#!/usr/bin/env bash
# billing behind PgBouncer in transaction mode (how most applications connect), against
# the running test cluster (PGHOST/PGPORT, billing installed). PgBouncer (Debian's; installed
# with apt-get when missing) runs as the postgres OS user on a unix socket of its own,
# pool_mode = transaction with 2 server connections, so consecutive transactions of
# different clients share server connections. Checked through the pooler:
#   - ledger calls, and an application transaction whose rollback undoes a debit;
#   - claim_outbox / ack_outbox;
#   - a consumer loop (an empty claim, commit) leaves no lock on the pooled backends and
#     nothing that outlives its lease: writers notify while the lease lasts, not after;
#   - a consumer waiting with LISTEN on a direct connection is woken by a write made
#     through the pooler;
#   - the test clock cannot leak from one client's transaction into the next client's.
# Exits non-zero on any failure. The only waits: a 2 s lease running out, and the
# timeouts of the notification checks.
#   PGBOUNCER_PORT   the pooler's port (default 55251; its socket is in a temp dir)
set -euo pipefail
cd "$(dirname "$0")/.."
: "${PGHOST:?PGHOST must point at a running cluster (see scripts/cluster.sh)}"
: "${PGPORT:?PGPORT must be set}"
bport=${PGBOUNCER_PORT:-55251}

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
if ! command -v pgbouncer >/dev/null && [ ! -x /usr/sbin/pgbouncer ]; then
  [ "$(id -u)" = 0 ] || { echo "pgbouncer-test: pgbouncer is missing (apt-get install pgbouncer)" >&2; exit 2; }
  echo "pgbouncer-test: installing pgbouncer (apt-get)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends pgbouncer >/dev/null
fi
bouncer=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
python3 -c 'import psycopg' 2>/dev/null || python3 -m pip install -q "psycopg[binary]" >/dev/null

db=billing_pgbouncer
psql -X -q -v ON_ERROR_STOP=1 -d postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
psql -X -q -v ON_ERROR_STOP=1 -d $db -c "CREATE EXTENSION billing"

dir=$(mktemp -d /tmp/pgb.XXXXXX)
chown postgres:postgres "$dir" 2>/dev/null || true
pid=
cleanup() {
  # pgbouncer's own pid (runuser may not pass the signal on), then runuser's
  [ -s "$dir/pgbouncer.pid" ] && kill "$(cat "$dir/pgbouncer.pid")" 2>/dev/null || true
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
cat >"$dir/pgbouncer.ini" <<EOF
[databases]
$db = host=$PGHOST port=$PGPORT dbname=$db user=postgres

[pgbouncer]
listen_addr =
listen_port = $bport
unix_socket_dir = $dir
auth_type = trust
auth_file = $dir/userlist.txt
pool_mode = transaction
default_pool_size = 2
max_client_conn = 50
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
ignore_startup_parameters = extra_float_digits
EOF
echo '"postgres" ""' >"$dir/userlist.txt"
chown postgres:postgres "$dir"/* 2>/dev/null || true
as_pg "$bouncer" "$dir/pgbouncer.ini" >"$dir/stdout.log" 2>&1 &
pid=$!
for _ in $(seq 50); do [ -S "$dir/.s.PGSQL.$bport" ] && break; sleep 0.1; done
[ -S "$dir/.s.PGSQL.$bport" ] || { cat "$dir/stdout.log" "$dir/pgbouncer.log" 2>/dev/null; echo "pgbouncer-test: pgbouncer did not start" >&2; exit 1; }

python3 - "host=$PGHOST port=$PGPORT dbname=$db user=postgres" "host=$dir port=$bport dbname=$db user=postgres" <<'PY'
import sys, time
import psycopg

direct_dsn, pooled_dsn = sys.argv[1], sys.argv[2]
failures = []

def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)

def direct():
    return psycopg.connect(direct_dsn, autocommit=True)

def pooled():
    # No server-side prepared statements: a transaction-mode pooler does not keep them.
    return psycopg.connect(pooled_dsn, autocommit=True, prepare_threshold=None)

def one(c, sql, args=None):
    return c.execute(sql, args).fetchone()[0]

d = direct()
# (this database's backends: pg_locks is the cluster's)
ADVISORY = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
WAKE_LOCKS = ADVISORY + " AND objsubid = 16975"
a, b = pooled(), pooled()
backends = set()
for c in (a, b):
    backends.add(one(c, "SELECT pg_backend_pid()"))

# The ledger through the pooler; an application's transaction is still all or nothing.
one(a, "SELECT billing.grant('pool', 100, 'g')")
check(one(b, "SELECT balance_after FROM billing.debit('pool', 30, 'd1')") == 70, "debit through the pooler")
a.execute("BEGIN")
one(a, "SELECT balance_after FROM billing.debit('pool', 10, 'rb')")
a.execute("ROLLBACK")
check(one(b, "SELECT billing.balance('pool')") == 70, "a rolled-back transaction undid its debit")
check(one(b, "SELECT replayed FROM billing.debit('pool', 10, 'rb')") is False, "the rolled-back debit's key is unused")

# claim and ack through the pooler
one(d, "SELECT billing.set_low_balance('pool', 50)")
one(a, "SELECT balance_after FROM billing.debit('pool', 20, 'd2')")  # 60 -> 40: below 50
rows = a.execute("SELECT id, kind FROM billing.claim_outbox(10, wait => '0')").fetchall()
check([k for _, k in rows] == ["low_balance"], f"claim through the pooler: {rows}")
check(one(b, "SELECT billing.ack_outbox(%s)", (rows[0][0],)) is True, "ack")
check(one(a, "SELECT billing.ack_outbox(%s)", (rows[0][0],)) is False, "a second ack is refused")
check(a.execute("SELECT id FROM billing.claim_outbox(10, wait => '0')").fetchall() == [], "nothing left to claim")

# A consumer loop through the pooler: its empty claim commits a 2 s lease and leaves no lock.
listener = direct()
listener.execute("LISTEN billing")
def woken(timeout):
    return any(True for _ in listener.notifies(timeout=timeout, stop_after=1))
check(a.execute("SELECT id FROM billing.claim_outbox(10, wait => '2 seconds', consumer => 'loop')").fetchall() == [], "empty claim")
check(one(d, "SELECT count(*) FROM billing.outbox_waiters WHERE consumer = 'loop' AND until > clock_timestamp()") == 1, "the empty claim wrote its lease")
check(one(d, WAKE_LOCKS) == 0, "no wake-up lock left on any backend after the claim's transaction")
# ... and a write through the pooler wakes the consumer that listens on a direct connection.
one(b, "SELECT billing.set_frozen('pool', true)")
check(woken(5), "a write through the pooler woke the waiting consumer")
until = one(d, "SELECT extract(epoch FROM until - clock_timestamp()) FROM billing.outbox_waiters WHERE consumer = 'loop'")
time.sleep(max(0.0, float(until)) + 0.2)
# The lease has ended: writers on the same pooled backends notify nobody.
for c, frozen in ((a, False), (b, True), (a, False)):
    one(c, "SELECT billing.set_frozen('pool', %s)", (frozen,))
check(not woken(1), "once the lease ended, writes through the pooler notify nobody")
check(one(d, ADVISORY) == 0, "no advisory lock on any backend")
for c in (a, b):
    backends.add(one(c, "SELECT pg_backend_pid()"))
check(len(backends) <= 2, f"the clients shared the pool's 2 server connections ({len(backends)} seen)")
# the consumer comes back: the next empty claim leases again, and the claim of the rows ends it
check(a.execute("SELECT id FROM billing.claim_outbox(10, consumer => 'loop')").fetchall() != [], "the rows written meanwhile are claimed")
check(one(d, "SELECT count(*) FROM billing.outbox_waiters WHERE consumer = 'loop'") == 0, "a claim that returns rows ends the lease")

# The test clock cannot leak into the next client's transaction.
try:
    a.execute("SET billing.clock = '2030-01-01'")
    check(False, "a session-level billing.clock through the pooler was refused")
except psycopg.errors.InvalidTransactionState:
    check(True, "a session-level billing.clock through the pooler was refused")
a.execute("BEGIN")
a.execute("SET billing.clock = '2030-01-01 00:00:00+00'")   # a plain SET, inside a transaction
one(a, "SELECT billing.grant('later', 1, 'g')")
a.execute("COMMIT")
for i in range(6):  # every pooled server connection, more than once
    c = (a, b)[i % 2]
    check(one(c, "SELECT current_setting('billing.clock')") == "", f"transaction {i} after it: no test clock")
one(b, "SELECT billing.grant('now', 1, 'g')")
check(one(d, "SELECT at < clock_timestamp() + interval '1 minute' FROM billing.journal WHERE customer = 'now'") is True,
      "the next client's entry is dated now")
check(one(d, "SELECT count(*) FROM billing.verify() WHERE check_name = 'future_entry' AND customer = 'later'") == 1,
      "verify() reports the entry the 2030 transaction wrote")

if failures:
    print(f"pgbouncer-test: {len(failures)} FAILED: " + "; ".join(failures))
    sys.exit(1)
print("pgbouncer-test: all checks passed")
PY
psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"
