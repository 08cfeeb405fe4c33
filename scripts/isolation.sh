#!/usr/bin/env bash
# Runs the isolation specs in tests/isolation/specs (pg_isolation_regress) against a
# running PostgreSQL cluster: PGHOST and PGPORT must be set by the caller, the
# superuser is `postgres`, and the billing extension must be installed (each spec's
# setup drops and recreates it in the database billing_isolation). PGBIN is the
# server's bin folder (default the system's PostgreSQL 15); the runner is its pgxs'.
# A spec that creates pgcrypto is skipped, and said so, on a server without it (the
# PostgreSQL 18 of scripts/pg18.sh is built without OpenSSL).
#
#   source scripts/cluster.sh; cluster_start 54329; scripts/isolation.sh; cluster_stop
#
# Postgres cannot write into the root-owned checkout, so the specs and expected output
# are copied to a temp dir owned by postgres, and the runner runs as postgres when
# invoked as root. On failure the diffs are printed and the temp dir is kept.
# To (re)generate an expected file: run, then copy <tmp>/results/<spec>.out into
# tests/isolation/expected/ -- and read it before committing it.
set -euo pipefail

: "${PGHOST:?PGHOST must point at a running cluster (see scripts/cluster.sh)}"
: "${PGPORT:?PGPORT must be set}"
PGUSER=${PGUSER:-postgres}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
src=$root/tests/isolation
pgbin=${PGBIN:-/usr/lib/postgresql/15/bin}
pgxs=$("$pgbin/pg_config" --pkglibdir)/pgxs
runner=$pgxs/src/test/isolation/pg_isolation_regress
[ -x "$runner" ] || { echo "isolation: $runner not found (install postgresql-server-dev-15)" >&2; exit 2; }

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

tests=()
for f in "$src"/specs/*.spec; do
  [ -e "$f" ] || continue
  tests+=("$(basename "$f" .spec)")
done
[ ${#tests[@]} -gt 0 ] || { echo "isolation: no specs in $src/specs" >&2; exit 2; }
skipped=()
if [ "$("$pgbin/psql" -X -At -d postgres -c "SELECT count(*) FROM pg_available_extensions WHERE name = 'pgcrypto'")" = 0 ]; then
  kept=()
  for t in "${tests[@]}"; do
    if grep -qi 'create extension.*pgcrypto' "$src/specs/$t.spec"; then skipped+=("$t"); else kept+=("$t"); fi
  done
  tests=("${kept[@]}")
  [ ${#skipped[@]} -eq 0 ] || echo "isolation: this server has no pgcrypto: skipping ${skipped[*]}"
fi

work=$(mktemp -d /tmp/billing-isolation.XXXXXX)
mkdir -p "$work/specs" "$work/expected"
cp "$src"/specs/*.spec "$work/specs/"
cp "$src"/expected/*.out "$work/expected/" 2>/dev/null || true
chmod 755 "$work"
[ "$(id -u)" = 0 ] && chown -R postgres:postgres "$work"

status=0
as_pg env -u RUST_BACKTRACE "$runner" \
  --bindir="$pgbin" \
  --host="$PGHOST" --port="$PGPORT" --user="$PGUSER" \
  --inputdir="$work" --outputdir="$work" \
  --dbname=billing_isolation --load-extension=billing \
  "${tests[@]}" || status=$?

if [ "$status" -ne 0 ]; then
  if [ -s "$work/regression.diffs" ]; then
    echo "---- $work/regression.diffs ----"
    cat "$work/regression.diffs"
  fi
  echo "isolation: FAILED (exit $status); results kept in $work" >&2
  exit 1
fi
rm -rf "$work"
echo "isolation: ${#tests[@]} specs passed${skipped[0]:+ (${#skipped[@]} skipped: no pgcrypto)}"
