#!/usr/bin/env bash
# A by-hand check of an upgrade with data (not part of the test command: it needs the
# previous release's library, built from its tag): a database made by OLD's library, with
# grants, debits, a refund, an active hold, a pending draw and a slotted customer, is
# updated to the current version by ALTER EXTENSION UPDATE and must then be clean under
# verify(), replay its old keys, refund an old debit by its old id, and take new calls.
#   scripts/upgrade-data-check.sh <old billing.so> <old version>
#   (PGBIN=<a private install>/bin to work there; CLUSTER_LOCALE=en_US.UTF-8 to upgrade a
#   database of that locale)
set -euo pipefail
cd "$(dirname "$0")/.."
OLD_SO=$1 OLD=$2
LIBDIR=$("${PG_CONFIG:-${PGBIN:-/usr/lib/postgresql/15/bin}/pg_config}" --pkglibdir)   # the server of PGBIN (default 15)
NEW_SO=$(mktemp /tmp/billing-new.XXXXXX.so); cp "$LIBDIR/billing.so" "$NEW_SO"
put_so() { install -m 644 "$1" "$LIBDIR/billing.so.tmp.$$" && mv -f "$LIBDIR/billing.so.tmp.$$" "$LIBDIR/billing.so"; }
source scripts/cluster.sh
trap 'cluster_stop; put_so "$NEW_SO"; rm -f "$NEW_SO"' EXIT
cluster_start 55003
q() { psql -X -qAt -v ON_ERROR_STOP=1 -d postgres "$@"; }
put_so "$OLD_SO"
q -c "CREATE EXTENSION billing VERSION '$OLD'"
q >/dev/null <<'SQL'
SELECT billing.grant('u1', 1000, 'g1');
SELECT billing.grant('u1', 500, 'g2', 'promo', now() + interval '30 days', 5);
SELECT * FROM billing.debit('u1', 30, 'd1');
SELECT * FROM billing.debit('u1', 20, 'd2');
SELECT billing.reserve('u1', 40, 'r1', '1 hour');
SELECT billing.grant('u2', 100, 'g1');
SELECT * FROM billing.debit('u2', 10, 'd1');
SELECT * FROM billing.refund((SELECT entry_id FROM billing.journal WHERE customer = 'u2' AND idempotency_key = 'd1'), 4, 'rf1');
SELECT billing.grant('hot', 10000, 'g1');
SELECT billing.set_slots('hot', 4);
SELECT count(*) FROM generate_series(1, 20) i, LATERAL billing.debit('hot', 7, 'k' || i);
SQL
q -c "CREATE TABLE before AS SELECT customer, billing.balance(customer) AS b FROM billing.customers WHERE slot_of IS NULL"
OLD_D1=$(q -c "SELECT entry_id FROM billing.journal WHERE customer = 'u1' AND idempotency_key = 'd1'")
put_so "$NEW_SO"
q -c "ALTER EXTENSION billing UPDATE"
fail() { echo "upgrade-data-check: $*" >&2; exit 1; }
[ "$(q -c "SELECT count(*) FROM billing.verify()")" = 0 ] || { q -c "SELECT * FROM billing.verify()"; fail "verify() not clean after the update"; }
[ "$(q -c "SELECT count(*) FROM before b WHERE billing.balance(b.customer) <> b.b")" = 0 ] || fail "a balance changed"
[ "$(q -c "SELECT replayed FROM billing.debit('u1', 30, 'd1')")" = t ] || fail "an old key did not replay"
[ "$(q -c "SELECT replayed FROM billing.debit('hot', 7, 'k3')")" = t ] || fail "an old slotted key did not replay"
[ "$(q -c "SELECT count(*) FROM billing.entry('$OLD_D1')")" = 1 ] || fail "billing.entry did not find an old id"
q -c "SELECT * FROM billing.refund('$OLD_D1')" >/dev/null
q -c "SELECT * FROM billing.debit('u1', 5, 'd3')" >/dev/null
q -c "SELECT * FROM billing.debit('hot', 3000, 'big')" >/dev/null   # gathers the slots
NEW_ID=$(q -c "SELECT entry_id FROM billing.journal WHERE customer = 'u1' AND idempotency_key = 'd3'")
[ "$(q -c "SELECT count(*) FROM billing.entry('$NEW_ID')")" = 1 ] || fail "billing.entry did not find a new id"
q -c "SELECT * FROM billing.refund('$NEW_ID')" >/dev/null
[ "$(q -c "SELECT count(*) FROM billing.verify()")" = 0 ] || { q -c "SELECT * FROM billing.verify()"; fail "verify() not clean after new calls"; }
echo "upgrade-data-check: $OLD -> $(q -c "SELECT extversion FROM pg_extension WHERE extname = 'billing'") with data: clean, old keys replay, old and new ids refund"
