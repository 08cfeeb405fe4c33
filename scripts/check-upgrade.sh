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

schema_of() {  # schema_of <db>: every object of the extension, as the catalogs define it
  # (pg_dump prints only "CREATE EXTENSION" for an extension's members).
  psql -X -At -v ON_ERROR_STOP=1 -d "$1" <<'SQL'
SELECT 'function ' || p.oid::regprocedure || ' ' || md5(pg_get_functiondef(p.oid)) || ' ' || coalesce(p.proacl::text, '')
  FROM pg_proc p WHERE p.pronamespace = 'billing'::regnamespace
UNION ALL
SELECT 'relation ' || c.relname || ' ' || c.relkind::text || ' ' || coalesce(c.relacl::text, '') || ' ' || coalesce(array_to_string(c.reloptions, ','), '')
  FROM pg_class c WHERE c.relnamespace = 'billing'::regnamespace AND c.relkind IN ('r', 'v', 'S', 'i')
UNION ALL
SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod) || ' '
       || a.attnotnull || ' ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE c.relnamespace = 'billing'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'constraint ' || conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
  FROM pg_constraint WHERE connamespace = 'billing'::regnamespace
UNION ALL
SELECT 'index ' || pg_get_indexdef(indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
 WHERE c.relnamespace = 'billing'::regnamespace
UNION ALL
SELECT 'view ' || c.relname || ' ' || md5(pg_get_viewdef(c.oid)) FROM pg_class c
 WHERE c.relnamespace = 'billing'::regnamespace AND c.relkind = 'v'
UNION ALL
SELECT 'trigger ' || pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
 WHERE c.relnamespace = 'billing'::regnamespace AND NOT t.tgisinternal
UNION ALL
SELECT 'config ' || (SELECT array_agg(x::regclass::text ORDER BY x::regclass::text) FROM unnest(e.extconfig) x)::text
  FROM pg_extension e WHERE e.extname = 'billing'
ORDER BY 1
SQL
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
  schema_of billing_fresh >/tmp/billing-fresh.schema
  schema_of billing_upgraded >/tmp/billing-upgraded.schema
  [ "$(wc -l </tmp/billing-fresh.schema)" -gt 100 ] || { echo "check-upgrade: could not read the schema"; exit 1; }
  if ! diff /tmp/billing-fresh.schema /tmp/billing-upgraded.schema >/tmp/billing-upgrade.diff; then
    echo "check-upgrade: $v -> $current differs from a fresh install:"; head -60 /tmp/billing-upgrade.diff; exit 1
  fi
  n=$((n + 1))
done
psql -X -q -d postgres -c "DROP DATABASE IF EXISTS billing_fresh" -c "DROP DATABASE IF EXISTS billing_upgraded"
echo "check-upgrade: $current frozen script matches; $n upgrade path(s) equal a fresh install"
