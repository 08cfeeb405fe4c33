#!/usr/bin/env bash
# Installs everything a fresh Debian machine needs to build and test the extension:
# Debian packages, cargo-pgrx 0.18.1, and pgrx's config for the system PostgreSQL 15.
# Idempotent: each step is skipped when already done.
set -euo pipefail

PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
export PGRX_HOME=${PGRX_HOME:-$HOME/.pgrx}
PGRX_VERSION=0.18.1

need_pkgs=()
for p in postgresql-15 postgresql-server-dev-15 postgresql-contrib libclang-dev clang pkg-config sudo; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need_pkgs+=("$p")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "bootstrap: apt-get install ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"
fi

if ! cargo pgrx --version 2>/dev/null | grep -q " ${PGRX_VERSION}\$"; then
  echo "bootstrap: cargo install cargo-pgrx ${PGRX_VERSION} (takes several minutes)"
  cargo install cargo-pgrx --version "${PGRX_VERSION}" --locked
fi

if [ ! -f "$PGRX_HOME/config.toml" ] || ! grep -q "pg15" "$PGRX_HOME/config.toml"; then
  echo "bootstrap: cargo pgrx init --pg15=$PG_CONFIG"
  cargo pgrx init --pg15="$PG_CONFIG"
fi
