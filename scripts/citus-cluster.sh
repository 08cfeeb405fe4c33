# Sourced by the Citus scripts: a throwaway Citus cluster on loopback, a coordinator and
# two workers, each a data directory and port of its own, run by the `postgres` OS user
# (see ../shared/CITUS.md). Needs Citus installed for $PGBIN's server (scripts/citus.sh).
#   citus_cluster_start <base port> [db]   coordinator on <base>, workers on <base+1>, <base+2>;
#                                          CREATE EXTENSION citus in db (default postgres) on
#                                          every node, workers added; exports PGHOST/PGPORT
#                                          of the coordinator, and CITUS_PORTS
#   citus_cluster_stop
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
CITUS_DIR=

citus_cluster_start() {
  local base=$1 db=${2:-postgres} i port
  CITUS_DIR=$(mktemp -d /tmp/citus.XXXXXX)
  chown postgres:postgres "$CITUS_DIR"
  CITUS_PORTS="$base $((base + 1)) $((base + 2))"
  for i in 0 1 2; do
    port=$((base + i))
    runuser -u postgres -- "$PGBIN/initdb" --no-locale -E UTF8 -U postgres -A trust -D "$CITUS_DIR/n$i" \
      >"$CITUS_DIR/initdb$i.log" 2>&1 || { cat "$CITUS_DIR/initdb$i.log"; return 1; }
    cat >>"$CITUS_DIR/n$i/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$CITUS_DIR'
shared_preload_libraries = 'citus'
citus.node_conninfo = 'sslmode=disable'
max_prepared_transactions = 100
max_connections = 200
shared_buffers = 128MB
fsync = on
log_min_messages = warning
CONF
    env -u RUST_BACKTRACE runuser -u postgres -- "$PGBIN/pg_ctl" start -w -D "$CITUS_DIR/n$i" \
      -l "$CITUS_DIR/server$i.log" >/dev/null || { cat "$CITUS_DIR/server$i.log"; return 1; }
  done
  export PGHOST=$CITUS_DIR PGPORT=$base PGUSER=postgres CITUS_PORTS CITUS_DIR
  for port in $CITUS_PORTS; do
    [ "$db" = postgres ] || psql -X -q -p "$port" -d postgres -c "CREATE DATABASE $db" >/dev/null
    psql -X -q -p "$port" -d "$db" -v ON_ERROR_STOP=1 -c "CREATE EXTENSION citus" >/dev/null
  done
  psql -X -q -p "$base" -d "$db" -v ON_ERROR_STOP=1 >/dev/null <<SQL
SELECT citus_set_coordinator_host('127.0.0.1', $base);
SELECT citus_add_node('127.0.0.1', $((base + 1)));
SELECT citus_add_node('127.0.0.1', $((base + 2)));
SQL
}

citus_cluster_stop() {
  [ -n "${CITUS_DIR:-}" ] || return 0
  local i
  for i in 0 1 2; do
    runuser -u postgres -- "$PGBIN/pg_ctl" stop -m immediate -D "$CITUS_DIR/n$i" >/dev/null 2>&1 || true
  done
  rm -rf "$CITUS_DIR"
  CITUS_DIR=
}
