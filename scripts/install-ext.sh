#!/usr/bin/env bash
# Builds the extension and installs it into the system PostgreSQL 15, atomically: each
# file is written under a temporary name and renamed into place. (`cargo pgrx install`
# overwrites billing.so in place, which crashes a running server that has it mapped.)
#   scripts/install-ext.sh            debug build
#   scripts/install-ext.sh --release  release build
set -euo pipefail
cd "$(dirname "$0")/.."
export PGRX_HOME=${PGRX_HOME:-$HOME/.pgrx}
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
mode=--debug; profile=debug
[ "${1:-}" = "--release" ] && { mode=; profile=release; }
out=target/$profile/billing-pg15
cargo pgrx package --pg-config "$PG_CONFIG" $mode --out-dir "$out" >/tmp/billing-package.log 2>&1 \
  || { tail -40 /tmp/billing-package.log; exit 1; }
(cd "$out" && find . -type f) | while read -r f; do
  dest=/${f#./}
  install -d "$(dirname "$dest")"
  tmp="$dest.tmp.$$"
  cp "$out/$f" "$tmp" && chmod 644 "$tmp" && mv -f "$tmp" "$dest"
done
echo "installed billing ($profile) into $($PG_CONFIG --pkglibdir) and $($PG_CONFIG --sharedir)/extension"
