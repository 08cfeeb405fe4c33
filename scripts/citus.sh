#!/usr/bin/env bash
# Makes Citus 13.2.2 available to the PostgreSQL 15 of PG_CONFIG (default the system's),
# for the Citus test layer and scripts/citus-demo.sh:
#  - an installed Citus ($(pg_config --pkglibdir)/citus.so) is used as it is;
#  - else it is built from ../shared/deps/citus-13.2.2.tar.gz (upstream source of tag
#    v13.2.2; about two minutes on two cores) and installed;
#  - else exit 3 with one line saying why (the caller skips its Citus layer, or fails
#    when CITUS_REQUIRED=1).
# Safe to run again: a second run finds it installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
TARBALL=${CITUS_TARBALL:-../shared/deps/citus-13.2.2.tar.gz}

libdir=$("$PG_CONFIG" --pkglibdir)
if [ -f "$libdir/citus.so" ]; then
  echo "citus: installed ($libdir/citus.so)" >&2
  exit 0
fi
if [ ! -f "$TARBALL" ]; then
  echo "citus: not installed and no source at $TARBALL" >&2
  exit 3
fi
pgmajor=$("$PG_CONFIG" --version | sed 's/^PostgreSQL \([0-9]*\).*/\1/')
if [ "$pgmajor" != 15 ]; then
  echo "citus: 13.2.2 is built here for PostgreSQL 15 only (this is $pgmajor)" >&2
  exit 3
fi

# Headers configure and make need beyond the extension's own (Debian).
need=()
for p in liblz4-dev libzstd-dev libkrb5-dev make gcc; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "citus: apt-get install ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

work=$(mktemp -d /tmp/citus-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
echo "citus: building 13.2.2 from $TARBALL (about two minutes)" >&2
tar -xzf "$TARBALL" -C "$work"
src=$(find "$work" -mindepth 1 -maxdepth 1 -type d | head -1)
# Debian's PostgreSQL 15.20 declares have_createdb_privilege() in commands/dbcommands.h;
# Citus 13.2.2 defines a static inline copy of it for 15, which no longer compiles. The
# server exports the function: declare it instead.
compat=$src/src/include/pg_version_compat.h
if grep -q 'have_createdb_privilege' "$("$PG_CONFIG" --includedir-server)/commands/dbcommands.h"; then
  python3 - "$compat" <<'PY'
import re, sys
p = sys.argv[1]
s = open(p).read()
m = re.search(r'static inline bool\s*\n?\s*have_createdb_privilege\(void\)\s*\{.*?\n\}\n', s, re.S)
if m:
    s = s[:m.start()] + 'extern bool have_createdb_privilege(void);\n' + s[m.end():]
    open(p, 'w').write(s)
PY
fi
(cd "$src" && PG_CONFIG=$PG_CONFIG ./configure --without-libcurl >"$work/configure.log" 2>&1) \
  || { tail -20 "$work/configure.log" >&2; exit 1; }
make -C "$src" -j"$(nproc)" >"$work/make.log" 2>&1 || { tail -30 "$work/make.log" >&2; exit 1; }
make -C "$src" install >"$work/install.log" 2>&1 || { tail -20 "$work/install.log" >&2; exit 1; }
echo "citus: installed into $libdir" >&2
