# Sourced by the scripts: a throwaway PostgreSQL cluster run by the `postgres` OS user
# (Postgres refuses root), in a short temp path (unix socket paths are short), on a port
# of its own. `cluster_start` exports PGHOST/PGPORT/PGUSER; `cluster_stop` removes it.
# The server is the one in PGBIN, the server's bin folder (default the system's PostgreSQL
# 15; scripts/pg18.sh prints 18's), or `cluster_start --bin <dir> <port> ...`.
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# ensure_locale <locale>: generates the locale if the machine lacks it (Debian: the
# locales package, its line in /etc/locale.gen, locale-gen), so a fresh machine can make a
# cluster in en_US.UTF-8. C, C.UTF-8 and POSIX always exist.
ensure_locale() {
  local want=$1 norm esc
  case "$want" in C|POSIX|C.UTF-8|C.utf8) return 0 ;; esac
  norm=$(printf '%s' "$want" | sed 's/\.[Uu][Tt][Ff]-\?8$/.utf8/')   # locale -a says en_US.utf8
  locale -a 2>/dev/null | grep -qixF "$norm" && return 0
  [ "$(id -u)" = 0 ] || { echo "locale $want is missing: as root, apt-get install locales and enable it in /etc/locale.gen, then locale-gen" >&2; return 1; }
  echo "generating locale $want (locale-gen)" >&2
  if ! command -v locale-gen >/dev/null || [ ! -f /etc/locale.gen ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends locales >/dev/null
  fi
  [ -f "/usr/share/i18n/locales/${want%%.*}" ] || { echo "no locale definition for $want (/usr/share/i18n/locales)" >&2; return 1; }
  esc=$(printf '%s' "$want" | sed 's/[.]/\\./g')
  sed -i "s/^# *\($esc \)/\1/" /etc/locale.gen
  grep -q "^$esc " /etc/locale.gen || echo "$want ${want##*.}" >>/etc/locale.gen
  locale-gen >/dev/null
  locale -a 2>/dev/null | grep -qixF "$norm" || { echo "could not generate locale $want" >&2; return 1; }
}

cluster_start() {   # cluster_start [--bin <server bin folder>] <port> [extra postgres -c options...]
  [ "${1:-}" = --bin ] && { PGBIN=$2; shift 2; }
  local port=$1; shift
  CLUSTER_BIN=$PGBIN   # what cluster_stop stops it with
  CLUSTER_DIR=$(mktemp -d /tmp/bl.XXXXXX)
  chown postgres:postgres "$CLUSTER_DIR" 2>/dev/null || true
  # CLUSTER_LOCALE: the cluster's locale (default none: C, the locale the tests assume).
  # A locale the machine lacks is generated first (ensure_locale).
  local locale=--no-locale
  if [ -n "${CLUSTER_LOCALE:-}" ]; then ensure_locale "$CLUSTER_LOCALE" || return 1; locale="--locale=$CLUSTER_LOCALE"; fi
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
  as_pg "${CLUSTER_BIN:-$PGBIN}/pg_ctl" stop -m immediate -D "$CLUSTER_DIR/data" >/dev/null 2>&1 || true
  rm -rf "$CLUSTER_DIR"
  CLUSTER_DIR=
}
