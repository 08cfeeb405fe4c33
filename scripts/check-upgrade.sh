#!/usr/bin/env bash
# Upgrade-script discipline (pgvector/pg_search style). Needs a running cluster (PGHOST,
# PGPORT) and the current version installed.
#  - sql/archive/billing--V.sql is the frozen install script of each released version V.
#    The current version's generated script must equal its archive (a released script is
#    never edited; change the version instead and add sql/billing--OLD--NEW.sql).
#  - From every older released version, CREATE EXTENSION ... VERSION 'V' + ALTER EXTENSION
#    UPDATE must give the same schema as a fresh install.
set -euo pipefail
cd "$(dirname "$0")/.."
SHAREDIR=$(/usr/lib/postgresql/15/bin/pg_config --sharedir)/extension
current=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
strip() { grep -v '^--' "$1" | sed '/^[[:space:]]*$/d'; }

[ -f "sql/archive/billing--$current.sql" ] || { echo "check-upgrade: no sql/archive/billing--$current.sql (copy the generated script there when releasing $current)"; exit 1; }
if ! diff <(strip "sql/archive/billing--$current.sql") <(strip "$SHAREDIR/billing--$current.sql") >/tmp/billing-archive.diff; then
  echo "check-upgrade: the install script of released version $current changed:"; head -40 /tmp/billing-archive.diff
  echo "bump the version in Cargo.toml and add an upgrade script instead"; exit 1
fi

schema_of() {  # schema_of <db>: the extension's objects, normalised
  pg_dump --schema-only --no-owner --schema=billing "$1" | grep -v '^--' | sed '/^[[:space:]]*$/d'
}
psql -X -q -d postgres -c "DROP DATABASE IF EXISTS billing_fresh" -c "CREATE DATABASE billing_fresh"
psql -X -q -d billing_fresh -c "CREATE EXTENSION billing"
n=0
for f in sql/archive/billing--*.sql; do
  v=$(basename "$f" .sql); v=${v#billing--}
  [ "$v" = "$current" ] && continue
  install -m 644 "$f" "$SHAREDIR/billing--$v.sql"
  psql -X -q -d postgres -c "DROP DATABASE IF EXISTS billing_upgraded" -c "CREATE DATABASE billing_upgraded"
  psql -X -q -v ON_ERROR_STOP=1 -d billing_upgraded -c "CREATE EXTENSION billing VERSION '$v'" -c "ALTER EXTENSION billing UPDATE"
  if ! diff <(schema_of billing_fresh) <(schema_of billing_upgraded) >/tmp/billing-upgrade.diff; then
    echo "check-upgrade: $v -> $current differs from a fresh install:"; head -60 /tmp/billing-upgrade.diff; exit 1
  fi
  n=$((n + 1))
done
psql -X -q -d postgres -c "DROP DATABASE IF EXISTS billing_fresh" -c "DROP DATABASE IF EXISTS billing_upgraded"
echo "check-upgrade: $current frozen script matches; $n upgrade path(s) equal a fresh install"
