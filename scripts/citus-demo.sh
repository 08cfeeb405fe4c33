#!/usr/bin/env bash
# The billing demo on a Citus cluster: a coordinator and two workers on loopback (Citus
# 13.2.2, from scripts/citus.sh), billing distributed with billing.distribute(), a short
# story told through the coordinator and the workers, and where each customer's rows
# live. Safe to run again: it replaces the previous demo cluster, which keeps running;
# the last lines say how to connect and stop it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PGRX_HOME=${PGRX_HOME:-$HOME/.pgrx}
PORT=${CITUS_DEMO_PORT:-54331}
STATE=/tmp/billing-citus-demo.env
PGBIN=/usr/lib/postgresql/15/bin

./scripts/bootstrap.sh
PG_CONFIG=$PGBIN/pg_config ./scripts/citus.sh || { echo "citus-demo: needs Citus (see scripts/citus.sh)" >&2; exit 1; }
echo "citus-demo: building and installing the extension (release)"
./scripts/install-ext.sh --release

source scripts/citus-cluster.sh
if [ -f "$STATE" ]; then   # a previous run's cluster
  (source "$STATE"; citus_cluster_stop) || true
  rm -f "$STATE"
fi
citus_cluster_start "$PORT" billing_demo
echo "CITUS_DIR=$CITUS_DIR" > "$STATE"
w1=$((PORT + 1)); w2=$((PORT + 2))
q() { psql -X -v ON_ERROR_STOP=1 -d billing_demo "$@"; }

q -q -c "CREATE EXTENSION billing" -c "SELECT billing.distribute()"
q -At -c "SELECT 'distributed: ' || count(*) FILTER (WHERE partmethod = 'h') || ' tables by customer or provider id, '
                 || count(*) FILTER (WHERE partmethod = 'n') || ' reference tables'
            FROM pg_dist_partition WHERE logicalrelid::text LIKE 'billing.%'"

# A signed Stripe delivery (t=..., v1=HMAC-SHA256 of "t.body"), as a receiver hands it in.
SECRET=whsec_citus_demo
signed() {  # signed <body>: the headers JSON of a delivery signed now
  python3 - "$SECRET" "$1" <<'PY'
import hashlib, hmac, json, sys, time
secret, body = sys.argv[1], sys.argv[2]
t = int(time.time())
sig = hmac.new(secret.encode(), f"{t}.{body}".encode(), hashlib.sha256).hexdigest()
print(json.dumps({"Stripe-Signature": f"t={t},v1={sig}"}))
PY
}
q -q -c "SELECT billing.add_endpoint('stripe', 'stripe')" -c "SELECT billing.add_secret('stripe', '$SECRET')" \
     -c "SELECT billing.define_plan('pro', ARRAY['chat', 'images'], 5000, '3 days', 'price_pro')" \
     -c "SELECT billing.define_meter('tokens', 3, 1000)" >/dev/null

now=$(date +%s)
checkout='{"id":"evt_demo_checkout","object":"event","created":'$now',"type":"checkout.session.completed","data":{"object":{"id":"cs_demo_1","object":"checkout.session","payment_status":"paid","payment_intent":"pi_demo_1","client_reference_id":"ada","amount_total":1000,"currency":"usd","metadata":{"credits":"1000"}}}}'

echo
echo "== 1. Ada's 10 USD top-up arrives as a signed webhook on worker 1 (port $w1): stored once, granted once"
deliver() {  # deliver <port>: the checkout event, signed now, through that node
  echo "SELECT status, detail FROM billing.ingest('stripe', :'h', :'b');" \
    | psql -X -v ON_ERROR_STOP=1 -p "$1" -d billing_demo -v h="$(signed "$checkout")" -v b="$checkout"
}
deliver "$w1"
echo "   ... and delivered again to worker 2 (port $w2): a duplicate"
deliver "$w2"

echo "== 2. Through the coordinator: a streamed LLM answer holds 300 credits and settles at 120 (customer-qualified forms: one worker)"
q <<'SQL'
\pset footer off
SELECT billing.reserve('ada', 300, 'req:1:hold') AS hold \gset
SELECT balance_after AS after_settle FROM billing.settle('ada', :'hold', 120);
SELECT credits, balance_after FROM billing.record_usage('ada', 'tokens', 2500, 'req:2');
SELECT count(billing.grant(c, 500, 'promo:' || c, 'promotion')) AS promos_granted
  FROM unnest(ARRAY['bob', 'carol', 'dave', 'erin', 'frank']) c;
SQL

echo "== 3. The application's transaction, inside a BEGIN block on worker 2: a debit rolled back leaves nothing"
psql -X -v ON_ERROR_STOP=1 -p "$w2" -d billing_demo <<'SQL'
\pset footer off
BEGIN;
SELECT balance_after AS inside_the_transaction FROM billing.debit('ada', 50, 'req:3');
ROLLBACK;
SELECT billing.balance('ada') AS after_rollback;
SQL

echo "== 4. Where each customer's rows live: one shard group, one worker"
q <<'SQL'
\pset footer off
SELECT c.customer, c.balance, n.nodename || ':' || n.nodeport AS worker,
       get_shard_id_for_distribution_column('billing.customers', c.customer) AS customers_shard
  FROM billing.customers c
  JOIN pg_dist_placement p ON p.shardid = get_shard_id_for_distribution_column('billing.customers', c.customer)
  JOIN pg_dist_node n ON n.groupid = p.groupid
 ORDER BY c.customer;
SQL

echo "== 5. A debit through the coordinator is delegated whole to that worker"
q -c "EXPLAIN (COSTS OFF) SELECT * FROM billing.debit('bob', 10, 'req:4')"

echo "== 6. verify() reads every shard: no row is the healthy answer"
q -c "SELECT * FROM billing.verify()"

cat <<MSG

The demo cluster is running (Citus 13.2.2 on PostgreSQL 15, database billing_demo):
  coordinator:  psql -h 127.0.0.1 -p $PORT -U postgres billing_demo
  workers:      ports $w1 and $w2
  stop:         (source scripts/citus-cluster.sh; CITUS_DIR=$CITUS_DIR citus_cluster_stop)
MSG
