#!/usr/bin/env bash
# Smoke test of scripts/receiver.py against the running test cluster (PGHOST/PGPORT): a
# signed Stripe delivery over HTTP is stored and applied, a retry is a duplicate, a
# forged one gets 400, and the receiver's role can do nothing but ingest.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import psycopg' 2>/dev/null || python3 -m pip install -q "psycopg[binary]" >/dev/null
db=billing_receiver
psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
psql -X -q -v ON_ERROR_STOP=1 -d $db <<'SQL'
CREATE EXTENSION billing;
SELECT billing.add_endpoint('stripe-main', 'stripe');
SELECT billing.add_secret('stripe-main', 'whsec_receiver_test');
DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'receiver') THEN CREATE ROLE receiver LOGIN; END IF; END $$;
GRANT billing_webhook TO receiver;
SQL
port=$((18000 + RANDOM % 2000))
python3 scripts/receiver.py --dsn "host=$PGHOST port=$PGPORT dbname=$db user=receiver" --port $port &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
python3 - "$port" <<'PY'
import hashlib, hmac, json, sys, time, urllib.request, urllib.error
port = sys.argv[1]
body = json.dumps({"id": "evt_http_1", "object": "event", "type": "checkout.session.completed", "created": int(time.time()),
                   "data": {"object": {"id": "cs_h", "mode": "payment", "payment_status": "paid", "payment_intent": "pi_h",
                                       "client_reference_id": "http-user", "amount_total": 500, "currency": "usd",
                                       "metadata": {"credits": "500"}}}})
def post(secret):
    t = int(time.time())
    sig = hmac.new(secret.encode(), f"{t}.{body}".encode(), hashlib.sha256).hexdigest()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/webhooks/stripe-main", data=body.encode(),
                                 headers={"Stripe-Signature": f"t={t},v1={sig}", "Content-Type": "application/json"})
    for _ in range(50):
        try:
            with urllib.request.urlopen(req) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)
        except urllib.error.URLError:
            time.sleep(0.1)  # the server is starting
    raise SystemExit("receiver did not start")
assert post("whsec_receiver_test") == (200, {"event_id": "evt_http_1", "status": "applied", "detail": "granted 500 credits for purchase pi_h"}), "first"
assert post("whsec_receiver_test")[1]["status"] == "duplicate", "retry"
code, err = post("whsec_forged")
assert code == 400 and err["sqlstate"] == "BL010", (code, err)
print("receiver: applied, duplicate, forged -> 400")
PY
test "$(psql -X -At -d $db -c "SELECT billing.balance('http-user')")" = 500
# the INSERT path, as the receiver's role: stored and applied, a duplicate INSERT adds nothing
body='{"id":"evt_inbox_1","object":"event","type":"customer.updated","created":'"$(date +%s)"',"data":{"object":{"id":"cus_i"}}}'
t=$(date +%s)
sig=$(printf '%s' "$t.$body" | openssl dgst -sha256 -hmac whsec_receiver_test -r | cut -d' ' -f1)
for _ in 1 2; do
  echo "INSERT INTO billing.inbox (endpoint, headers, body) VALUES ('stripe-main', :'hdr'::jsonb, :'body')" |
    psql -X -q -v ON_ERROR_STOP=1 -U receiver -d $db -v body="$body" -v hdr="{\"Stripe-Signature\": \"t=$t,v1=$sig\"}"
done
test "$(psql -X -At -d $db -c "SELECT status || deliveries FROM billing.events WHERE event_id = 'evt_inbox_1'")" = ignored2
# the receiver's role can ingest and nothing else
test "$(psql -X -At -U receiver -d $db -c "SELECT billing.balance('http-user')" 2>&1 | grep -c 'permission denied')" = 1
psql -X -q -d postgres -c "DROP DATABASE $db"
echo "receiver-test: ok"
