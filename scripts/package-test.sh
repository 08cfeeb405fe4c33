#!/usr/bin/env bash
# Tests the Debian packages (scripts/package.sh) as a user gets them: on a machine where
# the extension is not installed, `dpkg -i` the package, check dpkg lists every file and
# each is there, CREATE EXTENSION billing and the demo's first steps (scripts/demo.sql
# sections 1-3) in a throwaway cluster, `dpkg -r`, and check every file is gone.
#   scripts/package-test.sh [--debug] [MAJOR...]     (default: 15 18)
# It runs in a mount namespace of its own (unshare -m) where /usr/lib/postgresql,
# /usr/share/postgresql and dpkg's database are overlays of the real ones with every
# billing file taken out: that is the machine without the extension, and nothing it does
# is seen outside (the extension scripts/install-ext.sh put in the system's directories,
# servers running from them, and the real dpkg database all stay as they were).
# PostgreSQL 18: Debian 12 has no postgresql-18, so its package is installed with
# --force-depends (that dependency alone), and its files are tried on the PostgreSQL 18
# of scripts/pg18.sh (copied into overlays of its lib/ and share/extension/).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${BILLING_PKGTEST_NS:-}" ]; then
  exec unshare --mount --propagation private env BILLING_PKGTEST_NS=1 "$0" "$@"
fi
debug=; [ "${1:-}" = --debug ] && { debug=--debug; shift; }
majors=${*:-15 18}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
port=${PACKAGE_TEST_PORT:-54339}
fail() { echo "package-test: FAILED: $*" >&2; exit 1; }

mapfile -t debs < <(./scripts/package.sh $debug $majors)

work=$(mktemp -d /tmp/billing-pkgtest.XXXXXX)
source scripts/cluster.sh
trap 'cluster_stop; rm -rf "$work"' EXIT
overlay() {  # overlay <dir>: changes to <dir> from now on stay in this namespace
  local d=$1 u; u=$work/ovl/$(echo "$1" | tr / _)
  mkdir -p "$u/upper" "$u/work"
  chmod --reference="$d" "$u/upper"
  mount -t overlay overlay -o "lowerdir=$d,upperdir=$u/upper,workdir=$u/work" "$d"
}
billing_files() { find "$@" -maxdepth 1 -name 'billing*' 2>/dev/null | sort; }
demo() {  # demo <db>: sections 1-3 of the demo; Ada's balance must then be 830
  local out
  out=$({ sed -n '/== 4\./q;p' scripts/demo.sql; echo "SELECT 'balance=' || billing.balance('ada');"; } |
        psql -X -v ON_ERROR_STOP=1 -d "$1" 2>&1) || { echo "$out"; fail "the demo's first steps"; }
  grep -qx ' *balance=830' <<<"$out" || { echo "$out"; fail "Ada's balance after the demo's first steps is not 830"; }
}
for d in /usr/lib/postgresql /usr/share/postgresql /var/lib/dpkg; do overlay "$d"; done
path0=$PATH

for i in "${!debs[@]}"; do
  deb=${debs[$i]} major=$(echo "$majors" | awk -v n=$((i + 1)) '{print $n}')
  name=postgresql-$major-billing lib=/usr/lib/postgresql/$major/lib ext=/usr/share/postgresql/$major/extension
  echo "package-test: $deb"

  # The machine without the extension.
  dpkg -s "$name" >/dev/null 2>&1 && fail "$name is installed on this machine: dpkg -r $name first"
  rm -f $(billing_files "$lib" "$ext")
  [ -z "$(billing_files "$lib" "$ext")" ] || fail "could not take the billing files out of $lib, $ext"

  force=
  if [ ! -x "/usr/lib/postgresql/$major/bin/postgres" ]; then
    force=--force-depends
    echo "package-test: no system PostgreSQL $major here: dpkg -i --force-depends (its Depends: postgresql-$major)"
  fi
  dpkg --log=/dev/null $force -i "$deb" >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log"; fail "dpkg -i $deb"; }

  # dpkg owns exactly the package's files, and they are the only billing files there.
  diff <(dpkg-deb --fsys-tarfile "$deb" | tar -t | sed -n 's|^\./\(.*[^/]\)$|/\1|p' | sort) \
       <(dpkg -L "$name" | while read -r f; do [ -f "$f" ] && echo "$f"; done | sort) \
    || fail "dpkg -L $name is not the package's files"
  diff <(dpkg -L "$name" | grep '/billing[^/]*$' | sort) <(billing_files "$lib" "$ext") \
    || fail "the billing files in $lib, $ext are not the package's"
  for f in billing.so; do [ -f "$lib/$f" ] || fail "no $lib/$f"; done
  for f in billing.control "billing--$version.sql"; do [ -f "$ext/$f" ] || fail "no $ext/$f"; done
  nfiles=$(dpkg -L "$name" | while read -r f; do [ -f "$f" ] && echo; done | wc -l)

  # CREATE EXTENSION and the demo's first steps, on the files dpkg installed.
  if [ -z "$force" ]; then
    bin=/usr/lib/postgresql/$major/bin
  else
    # The files dpkg put at Debian's paths, in the lib/ and share/extension/ of the
    # PostgreSQL 18 at hand (overlays: its own stay as they were).
    bin=$(./scripts/pg18.sh)
    own_lib=$("$bin/pg_config" --pkglibdir) own_ext=$("$bin/pg_config" --sharedir)/extension
    overlay "$own_lib"; overlay "$own_ext"
    rm -f $(billing_files "$own_lib" "$own_ext")
    cp "$lib"/billing* "$own_lib/"; cp "$ext"/billing* "$own_ext/"
  fi
  PATH=$bin:$path0   # that server's psql
  cluster_start --bin "$bin" "$port"
  server=$(psql -X -At -d postgres -c "SHOW server_version")
  psql -X -q -v ON_ERROR_STOP=1 -d postgres -c "CREATE DATABASE billing_pkg"
  psql -X -q -v ON_ERROR_STOP=1 -d billing_pkg -c "CREATE EXTENSION billing"
  [ "$(psql -X -At -d billing_pkg -c "SELECT extversion FROM pg_extension WHERE extname = 'billing'")" = "$version" ] \
    || fail "CREATE EXTENSION billing did not install $version"
  demo billing_pkg
  cluster_stop

  # Removed cleanly: dpkg forgets it and no file of it is left.
  dpkg --log=/dev/null -r "$name" >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log"; fail "dpkg -r $name"; }
  if dpkg -s "$name" >/dev/null 2>&1 && ! dpkg -s "$name" | grep -q '^Status: .* not-installed$'; then
    fail "dpkg still knows $name after dpkg -r: $(dpkg -s "$name" | grep ^Status)"
  fi
  [ -z "$(billing_files "$lib" "$ext")" ] || fail "left after dpkg -r: $(billing_files "$lib" "$ext")"
  echo "package-test: $name: dpkg -i put $nfiles files, CREATE EXTENSION billing $version and the demo's first steps ran on PostgreSQL $server, dpkg -r took every file away"
done
echo "package-test: ${#debs[@]} package(s) passed"
