#!/usr/bin/env bash
# The demo's reconciliation part: a lost webhook recovered from Stripe's API.
# Customer 'demo-lost' buys credits twice; the first purchase's webhook arrives, the second's
# never does (the receiver was down). scripts/stripe-sync.py reads the events back from
# "Stripe" (here tests/stripe_standin.py, a local stand-in for GET /v1/events) and hands them
# to billing.ingest_fetched: the lost top-up is applied, the delivered one is a duplicate.
#
#   PGHOST=... PGPORT=... scripts/demo-sync.sh [database]     (default billing_demo)
#
# Needs the demo database of scripts/setup.sh (the endpoint stripe-main, secret whsec_demo;
# DEMO_WEBHOOK_SECRET overrides it). Creates the login role stripe_sync (granted billing_sync),
# as the tool is meant to run.
set -euo pipefail
cd "$(dirname "$0")/.."
DB=${1:-${DB:-billing_demo}}
SECRET=${DEMO_WEBHOOK_SECRET:-whsec_demo}
: "${PGHOST:?PGHOST must point at the demo cluster}" "${PGPORT:?PGPORT must be set}"
python3 -c 'import psycopg' 2>/dev/null || python3 -m pip install -q "psycopg[binary]" >/dev/null
work=$(mktemp -d /tmp/demo-sync.XXXXXX)
standin_pid=
cleanup() {
  [ -n "$standin_pid" ] && kill "$standin_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

psql -X -q -v ON_ERROR_STOP=1 -d "$DB" >/dev/null <<'SQL'
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'stripe_sync') THEN CREATE ROLE stripe_sync LOGIN; END IF;
END $$;
GRANT billing_sync TO stripe_sync;
SQL

# Stripe's view of the last half hour: two paid checkouts of demo-lost.
now=$(date +%s)
python3 - "$work/events.json" "$now" <<'PY'
import json, sys
path, now = sys.argv[1], int(sys.argv[2])
def topup(n, credits, created):
    return {"id": f"evt_demo_lost_{n}", "object": "event", "api_version": "2025-03-31.basil", "created": created,
            "livemode": False, "pending_webhooks": 0, "request": {"id": f"req_demo_lost_{n}", "idempotency_key": None},
            "type": "checkout.session.completed",
            "data": {"object": {"id": f"cs_demo_lost_{n}", "object": "checkout.session", "mode": "payment",
                                "payment_status": "paid", "payment_intent": f"pi_demo_lost_{n}",
                                "client_reference_id": "demo-lost", "amount_total": credits, "currency": "usd",
                                "metadata": {"credits": str(credits)}}}}
json.dump([topup(1, 500, now - 1800), topup(2, 1500, now - 600)], open(path, "w"), indent=2)
PY

balance() { psql -X -At -d "$DB" -c "SELECT billing.balance('demo-lost')"; }

echo
echo "== 17. A lost webhook, recovered from Stripe's API (scripts/stripe-sync.py)"
echo "demo-lost buys 500 credits; the webhook arrives (signed, through billing.ingest):"
python3 - "$work/events.json" "$SECRET" "$DB" <<'PY'
import hashlib, hmac, json, os, sys, time
import psycopg
path, secret, db = sys.argv[1:]
ev = json.load(open(path))[0]
body = json.dumps(dict(ev, pending_webhooks=1), indent=2)
t = int(time.time())
sig = hmac.new(secret.encode(), f"{t}.{body}".encode(), hashlib.sha256).hexdigest()
with psycopg.connect(f"dbname={db}", autocommit=True) as c:
    r = c.execute("SELECT event_id, status, detail FROM billing.ingest('stripe-main', %s::jsonb, %s)",
                  (json.dumps({"Stripe-Signature": f"t={t},v1={sig}"}), body)).fetchone()
print(f"  {r[0]}: {r[1]} ({r[2]})")
PY
echo "then buys 1500 more while the receiver is down: Stripe retries for 3 days, then gives up."
echo "balance of demo-lost before the sync: $(balance)"

# "Stripe": the stand-in serving both events, with the key the tool is given.
python3 tests/stripe_standin.py "$work/events.json" --port 0 --key sk_test_demo_sync >"$work/standin.out" 2>"$work/standin.err" &
standin_pid=$!
api=
while [ -z "$api" ]; do   # wait for the port: the stand-in prints its URL once listening
  kill -0 "$standin_pid" 2>/dev/null || { cat "$work/standin.err"; exit 1; }
  api=$(grep -o 'http://127.0.0.1:[0-9]*' "$work/standin.out" || true)
  [ -n "$api" ] || sleep 0.05
done

since=$((now - 3600))
echo
echo "stripe-sync.py, as the login role stripe_sync (granted billing_sync), from an hour ago:"
echo "  STRIPE_API_KEY=sk_test_... scripts/stripe-sync.py --dsn 'dbname=$DB user=stripe_sync' --endpoint stripe-main --since $since"
STRIPE_API_KEY=sk_test_demo_sync python3 scripts/stripe-sync.py --dsn "host=$PGHOST port=$PGPORT dbname=$DB user=stripe_sync" \
  --endpoint stripe-main --api-base "$api" --since "$since" 2>&1 | sed 's/^/  /'
echo "balance of demo-lost after the sync: $(balance)"
echo
echo "run again (as cron would): only duplicates, nothing changes"
STRIPE_API_KEY=sk_test_demo_sync python3 scripts/stripe-sync.py --dsn "host=$PGHOST port=$PGPORT dbname=$DB user=stripe_sync" \
  --endpoint stripe-main --api-base "$api" --since "$since" 2>/dev/null | sed 's/^/  /'
echo "balance of demo-lost: $(balance)"
psql -X -d "$DB" -c "SELECT endpoint, delivered, fetched, newest_delivered, newest_fetched FROM billing.sync_status"
