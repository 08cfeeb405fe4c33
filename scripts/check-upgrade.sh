#!/usr/bin/env bash
# Upgrade-script discipline (pgvector/pg_search style). Needs a running cluster (PGHOST,
# PGPORT), the current version installed (scripts/install-ext.sh; PGBIN picks another
# PostgreSQL 15 than the system's), and the git history: each released version's install
# script is rebuilt from the commit sql/releases names (never stored in the tree).
#  - The install script is the SQL files src/lib.rs loads, in order.
#  - A released install script is never changed: if the current version is released, the
#    install script built now must equal the release's (change the version instead and
#    add sql/billing--OLD--NEW.sql). Nor is a released upgrade script.
#  - From every older released version, CREATE EXTENSION ... VERSION 'V' + ALTER EXTENSION
#    UPDATE must give the same schema as a fresh install.
set -euo pipefail
cd "$(dirname "$0")/.."
PG_CONFIG=${PG_CONFIG:-${PGBIN:-/usr/lib/postgresql/15/bin}/pg_config}
SHAREDIR=$("$PG_CONFIG" --sharedir)/extension
current=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
fail() { echo "check-upgrade: $*" >&2; exit 1; }
# Statements only: no comments (pgrx's, or the files' own) and no blank lines.
strip() { awk '/^\/\*$/ { c = 1 } c { if ($0 ~ /^\*\/$/) c = 0; next } /^\/\* .* \*\/$/ { next }
               /^[[:space:]]*--/ { next } /^[[:space:]]*$/ { next } { print }' "$@"; }
# The files a src/lib.rs loads, in order (paths relative to the repository).
loaded() { sed -n 's/^[[:space:]]*extension_sql_file!("\.\.\/\([^"]*\)".*/\1/p'; }

# The history the releases are read from.
[ "$(git rev-parse --is-shallow-repository 2>/dev/null)" = false ] \
  || fail "needs the full git history (releases are rebuilt from their commits): git fetch --unshallow"
declare -A commit_of=()
released=()
while read -r v c; do
  case "$v" in ''|'#'*) continue ;; esac
  git cat-file -e "$c^{commit}" 2>/dev/null || fail "commit $c of release $v (sql/releases) is not in this clone: fetch the full history"
  commit_of[$v]=$c; released+=("$v")
done < sql/releases
[ ${#released[@]} -gt 0 ] || fail "sql/releases lists no release"

release_script() {  # release_script <version>: the install script of a released version
  local v=$1 c=${commit_of[$1]} f
  if git cat-file -e "$c:sql/archive/billing--$v.sql" 2>/dev/null; then
    git show "$c:sql/archive/billing--$v.sql"
  else
    local files; files=$(git show "$c:src/lib.rs" | loaded)
    [ -n "$files" ] || fail "release $v: $c's src/lib.rs loads no SQL file"
    for f in $files; do git show "$c:$f" || fail "release $v: $c has no $f"; echo; done
  fi
}

# The generated install script is what src/lib.rs loads (what the releases rely on).
[ -f "$SHAREDIR/billing--$current.sql" ] || fail "no $SHAREDIR/billing--$current.sql: run scripts/install-ext.sh"
# Its own files (another checkout may run this script at the same time).
tmp=$(mktemp -d /tmp/billing-check.XXXXXX); trap 'rm -rf "$tmp"' EXIT
built=$tmp/built.sql
for f in $(loaded < src/lib.rs); do cat "$f"; echo; done > "$built"
if ! diff <(strip "$built") <(strip "$SHAREDIR/billing--$current.sql") >$tmp/install.diff; then
  echo "check-upgrade: the installed billing--$current.sql is not the files src/lib.rs loads (install again?):"
  head -40 $tmp/install.diff; exit 1
fi

# (a) A released install script never changes; nor does a released upgrade script.
if [ -n "${commit_of[$current]:-}" ]; then
  if ! diff <(release_script "$current" | strip) <(strip "$built") >$tmp/release.diff; then
    echo "check-upgrade: the install script of released version $current changed:"; head -40 $tmp/release.diff
    echo "bump the version in Cargo.toml and add an upgrade script instead"; exit 1
  fi
  frozen="$current's install script is as released"
else
  frozen="$current is not released (not in sql/releases): no released install script to compare it with"
fi
prev=
for v in "${released[@]}"; do
  if [ -n "$prev" ]; then
    u=sql/billing--$prev--$v.sql
    git show "${commit_of[$v]}:$u" >$tmp/released-upgrade.sql 2>/dev/null || fail "release $v: ${commit_of[$v]} has no $u"
    cmp -s $tmp/released-upgrade.sql "$u" || fail "$u changed since release $v: a released upgrade script is frozen"
  fi
  prev=$v
done

schema_of() {  # schema_of <db>: every object of the extension, as the catalogs define it
  # (pg_dump prints only "CREATE EXTENSION" for an extension's members): definitions,
  # privileges, column order, collation and storage, comments, sequences, membership.
  psql -X -At -v ON_ERROR_STOP=1 -d "$1" <<'SQL'
SELECT 'function ' || p.oid::regprocedure || ' ' || md5(pg_get_functiondef(p.oid)) || ' ' || coalesce(p.proacl::text, '')
  FROM pg_proc p WHERE p.pronamespace = 'billing'::regnamespace
UNION ALL
SELECT 'relation ' || c.relname || ' ' || c.relkind::text || ' ' || coalesce(c.relacl::text, '') || ' ' || coalesce(array_to_string(c.reloptions, ','), '')
  FROM pg_class c WHERE c.relnamespace = 'billing'::regnamespace AND c.relkind IN ('r', 'v', 'S', 'i')
UNION ALL
SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod) || ' '
       || coalesce(nullif(a.attcollation, 0)::regcollation::text, '-') || ' '
       || a.attnotnull || ' ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE c.relnamespace = 'billing'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
-- PostgreSQL 18 lists NOT NULL in pg_constraint too, named after the column when it was
-- set: a column renamed since keeps the old name there. Compared without the name.
SELECT 'constraint ' || conrelid::regclass || ' ' || CASE WHEN contype = 'n' THEN '(not null)' ELSE conname END
       || ' ' || pg_get_constraintdef(oid)
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
UNION ALL
-- the order of the columns (a HOT update's WAL depends on it), their storage and compression
SELECT 'columns ' || c.relname || ' ' || string_agg(a.attname::text, ',' ORDER BY a.attnum)
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
 WHERE c.relnamespace = 'billing'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped GROUP BY c.relname
UNION ALL
SELECT 'storage ' || c.relname || '.' || a.attname || ' ' || a.attstorage::text || ' ' || coalesce(nullif(a.attcompression::text, ''), '-')
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
 WHERE c.relnamespace = 'billing'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'comment ' || pg_describe_object(d.classoid, d.objoid, d.objsubid) || ' ' || md5(d.description)
  FROM pg_description d
 WHERE (d.classoid = 'pg_class'::regclass AND d.objoid IN (SELECT oid FROM pg_class WHERE relnamespace = 'billing'::regnamespace))
    OR (d.classoid = 'pg_proc'::regclass AND d.objoid IN (SELECT oid FROM pg_proc WHERE pronamespace = 'billing'::regnamespace))
UNION ALL
SELECT 'schema ' || coalesce(n.nspacl::text, '') FROM pg_namespace n WHERE n.nspname = 'billing'
UNION ALL
SELECT 'sequence ' || s.seqrelid::regclass || ' ' || s.seqtypid::regtype || ' ' || s.seqstart || ' ' || s.seqincrement
       || ' ' || s.seqmax || ' ' || s.seqmin || ' ' || s.seqcache || ' ' || s.seqcycle || ' owned by '
       || coalesce((SELECT d.refobjid::regclass || '.' || a.attname FROM pg_depend d
                      JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                     WHERE d.classid = 'pg_class'::regclass AND d.objid = s.seqrelid AND d.deptype IN ('a', 'i')
                       AND d.refobjsubid > 0), '-')
  FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid WHERE c.relnamespace = 'billing'::regnamespace
UNION ALL
SELECT 'member ' || pg_describe_object(d.classid, d.objid, d.objsubid)
  FROM pg_depend d
 WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
   AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'billing')
ORDER BY 1
SQL
}
psql -X -q -d postgres -c "DROP DATABASE IF EXISTS billing_fresh" -c "CREATE DATABASE billing_fresh"
psql -X -q -d billing_fresh -c "CREATE EXTENSION billing"
schema_of billing_fresh >$tmp/fresh.schema
[ "$(wc -l <$tmp/fresh.schema)" -gt 100 ] || fail "could not read the schema"
n=0
for v in "${released[@]}"; do
  [ "$v" = "$current" ] && continue
  release_script "$v" >"$SHAREDIR/billing--$v.sql.tmp.$$" && mv -f "$SHAREDIR/billing--$v.sql.tmp.$$" "$SHAREDIR/billing--$v.sql"
  psql -X -q -d postgres -c "DROP DATABASE IF EXISTS billing_upgraded" -c "CREATE DATABASE billing_upgraded"
  psql -X -q -v ON_ERROR_STOP=1 -d billing_upgraded -c "CREATE EXTENSION billing VERSION '$v'" -c "ALTER EXTENSION billing UPDATE"
  schema_of billing_upgraded >$tmp/upgraded.schema
  if ! diff $tmp/fresh.schema $tmp/upgraded.schema >$tmp/upgrade.diff; then
    echo "check-upgrade: $v -> $current differs from a fresh install:"; head -60 $tmp/upgrade.diff; exit 1
  fi
  echo "check-upgrade: $v (${commit_of[$v]:0:12}) -> $current equals a fresh install"
  n=$((n + 1))
done
psql -X -q -d postgres -c "DROP DATABASE IF EXISTS billing_fresh" -c "DROP DATABASE IF EXISTS billing_upgraded"
echo "check-upgrade: $frozen; released upgrade scripts unchanged; $n upgrade path(s) equal a fresh install"
