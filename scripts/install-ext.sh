#!/usr/bin/env bash
# Builds the extension and installs it into a PostgreSQL (by default the system's 15),
# atomically: each file is written under a temporary name and renamed into place.
# (`cargo pgrx install` overwrites billing.so in place, which crashes a running server
# that has it mapped.) The server is the one of PG_CONFIG, else of PGBIN (the server's
# bin folder), else /usr/lib/postgresql/15/bin; cargo pgrx builds for its major
# (pgrx's config must list it: scripts/bootstrap.sh).
#   scripts/install-ext.sh            debug build
#   scripts/install-ext.sh --release  release build
#   PGBIN=$(scripts/pg18.sh) scripts/install-ext.sh   into PostgreSQL 18 (its own lib/, share/)
set -euo pipefail
cd "$(dirname "$0")/.."
export PGRX_HOME=${PGRX_HOME:-$HOME/.pgrx}
PG_CONFIG=${PG_CONFIG:-${PGBIN:-/usr/lib/postgresql/15/bin}/pg_config}
major=$("$PG_CONFIG" --version | sed -n 's/^PostgreSQL \([0-9]*\).*/\1/p')
mode=--debug; profile=debug
[ "${1:-}" = "--release" ] && { mode=; profile=release; }
out=target/$profile/billing-pg$major
# Emptied first: files a package of another pg_config left there would be installed too.
rm -rf "$out"
cargo pgrx package --pg-config "$PG_CONFIG" $mode --out-dir "$out" >/tmp/billing-package-pg$major.log 2>&1 \
  || { tail -40 /tmp/billing-package-pg$major.log; exit 1; }
(cd "$out" && find . -type f) | while read -r f; do
  dest=/${f#./}
  install -d "$(dirname "$dest")"
  tmp="$dest.tmp.$$"
  cp "$out/$f" "$tmp" && chmod 644 "$tmp" && mv -f "$tmp" "$dest"
done
echo "installed billing ($profile, PostgreSQL $major) into $($PG_CONFIG --pkglibdir) and $($PG_CONFIG --sharedir)/extension"
