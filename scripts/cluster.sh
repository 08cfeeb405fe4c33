# Sourced by the scripts: a throwaway PostgreSQL 15 cluster run by the `postgres` OS user
# (Postgres refuses root), in a short temp path (unix socket paths are short), on a port
# of its own. `cluster_start` exports PGHOST/PGPORT/PGUSER; `cluster_stop` removes it.
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

cluster_start() {   # cluster_start <port> [extra postgres -c options...]
  local port=$1; shift
  CLUSTER_DIR=$(mktemp -d /tmp/bl.XXXXXX)
  chown postgres:postgres "$CLUSTER_DIR" 2>/dev/null || true
  # CLUSTER_LOCALE: the cluster's locale (default none: C, the locale the tests assume).
  local locale=--no-locale; [ -n "${CLUSTER_LOCALE:-}" ] && locale="--locale=$CLUSTER_LOCALE"
  as_pg "$PGBIN/initdb" $locale -E UTF8 -U postgres -A trust -D "$CLUSTER_DIR/data" >"$CLUSTER_DIR/initdb.log" 2>&1 \
    || { cat "$CLUSTER_DIR/initdb.log"; return 1; }
  local opts="-c listen_addresses='' -k $CLUSTER_DIR -p $port -c fsync=on -c synchronous_commit=on"
  for o in "$@"; do opts="$opts -c $o"; done
  # RUST_BACKTRACE would make pgrx print a backtrace into the log for every ERROR.
  env -u RUST_BACKTRACE runuser -u postgres -- "$PGBIN/pg_ctl" start -w -D "$CLUSTER_DIR/data" \
    -l "$CLUSTER_DIR/server.log" -o "$opts" >/dev/null \
    || { cat "$CLUSTER_DIR/server.log"; return 1; }
  export PGHOST=$CLUSTER_DIR PGPORT=$port PGUSER=postgres
}

cluster_stop() {
  [ -n "${CLUSTER_DIR:-}" ] || return 0
  as_pg "$PGBIN/pg_ctl" stop -m immediate -D "$CLUSTER_DIR/data" >/dev/null 2>&1 || true
  rm -rf "$CLUSTER_DIR"
  CLUSTER_DIR=
}
