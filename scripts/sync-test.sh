#!/usr/bin/env bash
# End-to-end test of reconciliation (SPEC section 2): scripts/stripe-sync.py against the Stripe
# stand-in (tests/stripe_standin.py) and the running test cluster (PGHOST/PGPORT, as
# scripts/test.sh sets them; the billing extension installed).
#
# 350 Stripe events (top-ups for five customers, a few customer.updated, two top-ups of a
# customer not linked yet) are served by the stand-in; 200 of them were delivered as signed
# webhooks through billing.ingest before, the rest were lost. Checked:
#   the stand-in over HTTP: newest-first order, limit bounds, starting_after/ending_before paging,
#     created[gt|gte|lt|lte] and created=, type, has_more, 401 bodies;
#   (a) a wrong key: exit 2, Stripe's 401 message, nothing changed (and no key at all: refused);
#   (b) the stand-in failing mid-paging (500 on the 3rd request): exit 2, nothing changed;
#       a body the database refuses after 150 good ones (BL012): exit 2, all rolled back;
#       a role granted billing_webhook only: exit 2, nothing changed;
#   (c) a run with --since: every missed event stored and applied, the delivered ones
#       `duplicate`, balances = the sums, billing.sync_status counts, exit 1 for `failed`;
#   (d) a second run without --since (resuming from what is stored): only duplicates, no change;
#   (e) an event appearing at the stand-in afterwards is brought by the next run;
#   (f) that event delivered by webhook afterwards is a duplicate;
#   and linking the waiting customer applies its failed events in order.
# Prints PASS/FAIL lines; exits non-zero on any failure. Cleans up its processes and database.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import psycopg' 2>/dev/null || python3 -m pip install -q "psycopg[binary]" >/dev/null
: "${PGHOST:?PGHOST must point at the test cluster}" "${PGPORT:?PGPORT must be set}"
db=billing_sync_test
work=$(mktemp -d /tmp/sync-test.XXXXXX)
cleanup() {
  # The Python part stops its stand-ins itself; any left (the test killed) by their pid files.
  for f in "$work"/*.pid; do
    [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
  done
  psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true
  psql -X -q -d postgres -c "DROP ROLE IF EXISTS syncer" -c "DROP ROLE IF EXISTS sync_hook" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

psql -X -q -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
psql -X -q -v ON_ERROR_STOP=1 -d $db >/dev/null <<'SQL'
CREATE EXTENSION billing;
SELECT billing.add_endpoint('stripe-main', 'stripe');
SELECT billing.add_secret('stripe-main', 'whsec_sync_test');
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'syncer') THEN CREATE ROLE syncer LOGIN; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'sync_hook') THEN CREATE ROLE sync_hook LOGIN; END IF;
END $$;
GRANT billing_sync TO syncer;
GRANT billing_webhook TO sync_hook;
SQL

python3 - "$db" "$work" <<'PY'
import base64, hashlib, hmac, json, os, re, signal, subprocess, sys, time
import urllib.error, urllib.request
import psycopg

db, work = sys.argv[1], sys.argv[2]
host, port = os.environ["PGHOST"], os.environ["PGPORT"]
ADMIN = f"host={host} port={port} dbname={db} user={os.environ.get('PGUSER', 'postgres')}"
SYNCER = f"host={host} port={port} dbname={db} user=syncer"
HOOK = f"host={host} port={port} dbname={db} user=sync_hook"
SECRET = "whsec_sync_test"
KEY = "sk_test_51SyncStandinGoodKey0001"
SYNC = ["python3", "scripts/stripe-sync.py"]
STANDIN = ["python3", "tests/stripe_standin.py"]
failures = []
procs = []
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def check(name, ok, detail=""):
    print(f"{'PASS' if ok else 'FAIL'}: {name}" + ("" if ok or not detail else f"\n      {detail}"), flush=True)
    if not ok:
        failures.append(name)
    return ok


# ---------------------------------------------------------------- the events
now = int(time.time())
base = now - 30 * 3600
CUSTOMERS = ["sync-a", "sync-b", "sync-c", "sync-d", "sync-e"]
LATE = {150: 250, 160: 300}  # top-ups of cus_synclate, not linked yet: `failed` until linked


def evt_id(tag):
    # Stripe-like ids, not in creation order (so the tiebreak on id is really exercised)
    return "evt_1S" + hashlib.sha256(tag.encode()).hexdigest()[:22]


def topup(i, customer, credits, created, provider_customer=None):
    obj = {"id": f"cs_sync_{i}", "object": "checkout.session", "mode": "payment", "payment_status": "paid",
           "payment_intent": f"pi_sync_{i}", "amount_total": credits, "currency": "usd",
           "metadata": {"credits": str(credits)}}
    if customer:
        obj["client_reference_id"] = customer
    if provider_customer:
        obj["customer"] = provider_customer
    return {"id": evt_id(f"topup-{i}"), "object": "event", "api_version": "2025-03-31.basil", "created": created,
            "data": {"object": obj}, "livemode": False, "pending_webhooks": 0,
            "request": {"id": f"req_sync_{i}", "idempotency_key": None}, "type": "checkout.session.completed"}


events, credits_of = [], {}
created = base
for i in range(350):
    if i and i % 7 != 3:
        created += 300  # every 7th event shares its second with the one before
    if i in LATE:
        ev = topup(i, None, LATE[i], created, "cus_synclate")
    elif i % 25 == 10:
        ev = {"id": evt_id(f"cu-{i}"), "object": "event", "api_version": "2025-03-31.basil", "created": created,
              "data": {"object": {"id": f"cus_sync_{i}", "object": "customer", "email": f"u{i}@example.com"}},
              "livemode": False, "pending_webhooks": 0, "request": {"id": None, "idempotency_key": None},
              "type": "customer.updated"}
    else:
        cust = CUSTOMERS[i % 5]
        amount = 100 + (i * 37) % 900
        credits_of[cust] = credits_of.get(cust, 0) + amount
        ev = topup(i, cust, amount, created)
    events.append(ev)
# the endpoint was up for events 0-119, 200-299 and 340-349, down in between, and a few
# deliveries were lost while it was up (i % 17 == 5): the last hour holds both kinds
delivered_idx = [i for i in range(350) if (i < 120 or 200 <= i < 300 or i >= 340) and i % 17 != 5]
lost_idx = [i for i in range(350) if i not in set(delivered_idx)]
delivered = {events[i]["id"] for i in delivered_idx}
by_id = {e["id"]: e for e in events}
newest_first = sorted(events, key=lambda e: (e["created"], e["id"]), reverse=True)
ids_newest_first = [e["id"] for e in newest_first]


def expected_status(ev):
    if ev["id"] in delivered:
        return "duplicate"
    if ev["type"] == "customer.updated":
        return "ignored"
    if ev["data"]["object"].get("customer") == "cus_synclate":
        return "failed"
    return "applied"


def write_events(path, evs):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(evs, f)
    os.replace(tmp, path)  # the stand-in sees a new file (inode, size, mtime) and reloads it


events_path = os.path.join(work, "events.json")
write_events(events_path, events)


# ---------------------------------------------------------------- helpers
def standin(path, *extra):
    p = subprocess.Popen(STANDIN + [path, "--key", KEY, *extra], stdout=subprocess.PIPE, text=True)
    procs.append(p)
    with open(os.path.join(work, f"standin{p.pid}.pid"), "w") as f:
        f.write(str(p.pid))
    line = p.stdout.readline()  # waits until the port is open
    m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
    if not m:
        raise SystemExit(f"the stand-in did not start: {line!r}")
    return f"http://127.0.0.1:{m.group(1)}"


def sync(api, *args, key=KEY, dsn=SYNCER, endpoint="stripe-main"):
    env = dict(os.environ)
    env.pop("STRIPE_API_KEY", None)
    if key is not None:
        env["STRIPE_API_KEY"] = key
    r = subprocess.run(SYNC + ["--dsn", dsn, "--endpoint", endpoint, "--api-base", api, *map(str, args)],
                       env=env, capture_output=True, text=True, timeout=300)
    lines = [l for l in r.stdout.splitlines() if not l.startswith("summary:")]
    rows = [tuple((l.split(" ", 3) + [""])[:4]) for l in lines]
    return r.returncode, r.stdout, r.stderr, rows


def sign(body):
    t = int(time.time())
    sig = hmac.new(SECRET.encode(), f"{t}.{body}".encode(), hashlib.sha256).hexdigest()
    return {"Stripe-Signature": f"t={t},v1={sig}"}


def webhook_body(ev):
    # as Stripe delivers it: pretty-printed, and pending_webhooks counting this delivery
    return json.dumps(dict(ev, pending_webhooks=1), indent=2)


conn = psycopg.connect(ADMIN, autocommit=True)


def q(sql, *a):
    return conn.execute(sql, a).fetchall()


def deliver(ev):
    body = webhook_body(ev)
    return q("SELECT event_id, status, detail FROM billing.ingest('stripe-main', %s::jsonb, %s)",
             json.dumps(sign(body)), body)[0]


def balance(c):
    return q("SELECT billing.balance(%s)", c)[0][0]


def status_row():
    r = q("SELECT delivered, fetched, extract(epoch FROM newest_delivered)::bigint, extract(epoch FROM newest_fetched)::bigint "
          "FROM billing.sync_status WHERE endpoint = 'stripe-main'")
    return r[0] if r else None


def snapshot():
    """What a run must not change: events (id, status, detail), variants, journal, balances,
    outbox, sync_status. (A duplicate's delivery counter may move: it records attempts.)"""
    return {
        "events": q("SELECT count(*), coalesce(sum(hashtext(event_id || ':' || status || ':' || coalesce(detail, ''))), 0) FROM billing.events")[0],
        "variants": q("SELECT count(*) FROM billing.event_variants")[0],
        "journal": q("SELECT count(*), coalesce(sum(amount), 0) FROM billing.journal")[0],
        "balances": q("SELECT string_agg(customer || '=' || billing.balance(customer), ',' ORDER BY customer) FROM billing.customers")[0],
        "outbox": q("SELECT count(*) FROM billing.outbox")[0],
        "sync_status": q("SELECT endpoint, delivered, fetched, newest_delivered, newest_fetched, synced_through FROM billing.sync_status ORDER BY 1"),
    }


def diff(a, b):
    return "; ".join(f"{k}: {a[k]} -> {b[k]}" for k in a if a[k] != b[k])


def http(api, path, key=KEY, basic=False):
    headers = {}
    if key is not None:
        headers["Authorization"] = ("Basic " + base64.b64encode(f"{key}:".encode()).decode()) if basic else f"Bearer {key}"
    try:
        with urllib.request.urlopen(urllib.request.Request(api + path, headers=headers), timeout=30) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def ids(page):
    return [e["id"] for e in page["data"]]


try:
    # ------------------------------------------------------------ webhooks delivered before the outage(s)
    outcomes = [deliver(events[i]) for i in delivered_idx]
    bad = [o for o in outcomes if o[1] not in ("applied", "ignored")]
    check(f"{len(delivered_idx)} of 350 events delivered as signed webhooks through billing.ingest", not bad, f"{bad[:3]}")

    api = standin(events_path)

    # ------------------------------------------------------------ the stand-in itself
    code, body = http(api, "/v1/events", key=None)
    check("stand-in: no key -> 401 with Stripe's error body",
          code == 401 and set(body) == {"error"} and body["error"]["type"] == "invalid_request_error"
          and body["error"]["message"].startswith("You did not provide an API key"), f"{code} {body}")
    wrong = "sk_test_51WrongKeyWrongKey9z9z"
    code, body = http(api, "/v1/events", key=wrong)
    check("stand-in: wrong key -> 401 'Invalid API Key provided: sk_test_****9z9z', key masked",
          code == 401 and body == {"error": {"message": "Invalid API Key provided: sk_test_" + "*" * (len(wrong) - 12) + "9z9z",
                                             "type": "invalid_request_error"}}, f"{code} {body}")
    code, body = http(api, "/v1/events?limit=3", basic=True)
    check("stand-in: HTTP basic auth with the key as user", code == 200 and len(body["data"]) == 3, f"{code}")
    code, body = http(api, "/v1/events")
    check("stand-in: default page: 10 events, newest first (created, then id), has_more, object/url",
          code == 200 and ids(body) == ids_newest_first[:10] and body["has_more"] is True
          and body["object"] == "list" and body["url"] == "/v1/events", f"{code} {ids(body)[:3]}")
    lim = {n: http(api, f"/v1/events?limit={n}") for n in ("0", "101", "-1", "ten", "1", "100")}
    check("stand-in: limit 0, 101, -1, 'ten' -> 400 invalid_request_error on param limit",
          all(lim[n][0] == 400 and lim[n][1]["error"]["type"] == "invalid_request_error" and lim[n][1]["error"].get("param") == "limit"
              for n in ("0", "101", "-1", "ten")), str({n: lim[n][0] for n in lim}))
    check("stand-in: limit 1 and 100 give 1 and 100 events",
          len(lim["1"][1]["data"]) == 1 and ids(lim["100"][1]) == ids_newest_first[:100])
    # starting_after: forward through everything
    seen, pages, cursor, last = [], 0, None, None
    while True:
        code, page = http(api, "/v1/events?limit=100" + (f"&starting_after={cursor}" if cursor else ""))
        pages += 1
        seen += ids(page)
        last = page
        if not page["has_more"] or pages > 10:
            break
        cursor = seen[-1]
    check("stand-in: starting_after pages through all 350, each once, in order; has_more false at the end",
          seen == ids_newest_first and pages == 4 and last["has_more"] is False, f"{len(seen)} in {pages} pages")
    # ending_before: backwards from the oldest event, each page the events just newer than the cursor
    back, cursor, pages = [], ids_newest_first[-1], 0
    while True:
        code, page = http(api, f"/v1/events?limit=100&ending_before={cursor}")
        pages += 1
        back = ids(page) + back
        if not page["has_more"] or pages > 10:
            break
        cursor = ids(page)[0]
    check("stand-in: ending_before pages backwards (newest first within a page) to the newest",
          back == ids_newest_first[:-1] and pages == 4, f"{len(back)} in {pages} pages")
    code, page = http(api, f"/v1/events?limit=5&ending_before={ids_newest_first[20]}")
    check("stand-in: ending_before=X gives the events just before X in the list, has_more when newer remain",
          ids(page) == ids_newest_first[15:20] and page["has_more"] is True, f"{ids(page)}")
    code, body = http(api, "/v1/events?starting_after=evt_nosuchevent")
    check("stand-in: unknown cursor -> 400 resource_missing on starting_after",
          code == 400 and body["error"].get("code") == "resource_missing" and body["error"].get("param") == "starting_after"
          and "evt_nosuchevent" in body["error"]["message"], f"{code} {body}")
    code, body = http(api, f"/v1/events?starting_after={ids_newest_first[3]}&ending_before={ids_newest_first[1]}")
    check("stand-in: starting_after with ending_before -> 400", code == 400, f"{code}")
    # created filters, at a second that several events share
    tie = next(e["created"] for i, e in enumerate(events) if i % 7 == 3 and i > 100)

    def all_pages(query):
        out, cursor = [], None
        for _ in range(10):
            code, page = http(api, f"/v1/events?limit=100&{query}" + (f"&starting_after={cursor}" if cursor else ""))
            if code != 200:
                return code, out
            out += ids(page)
            if not page["has_more"]:
                return 200, out
            cursor = out[-1]
        return 0, out

    cmp = {"gt": lambda c: c > tie, "gte": lambda c: c >= tie, "lt": lambda c: c < tie, "lte": lambda c: c <= tie}
    res = {op: all_pages(f"created[{op}]={tie}") for op in cmp}
    res["eq"] = all_pages(f"created={tie}")
    cmp["eq"] = lambda c: c == tie
    exp = {op: [e for e in ids_newest_first if cmp[op](by_id[e]["created"])] for op in cmp}
    check("stand-in: created[gt|gte|lt|lte]=t and created=t (t shared by 2 events), across pages",
          all(res[op] == (200, exp[op]) for op in cmp) and len(exp["eq"]) == 2,
          str({op: (res[op][0], len(res[op][1]), len(exp[op])) for op in cmp}))
    code, page = http(api, f"/v1/events?limit=100&created[gte]={tie}&created[lt]={tie + 1000}")
    check("stand-in: a created range (gte and lt together)",
          ids(page) == [e for e in ids_newest_first if tie <= by_id[e]["created"] < tie + 1000])
    late = events[304]["created"]  # 304 % 7 == 3: shares its second too
    n_in = len([e for e in ids_newest_first if by_id[e]["created"] >= late])
    c1, p1 = http(api, f"/v1/events?limit={n_in}&created[gte]={late}")
    c2, p2 = http(api, f"/v1/events?limit={n_in - 1}&created[gte]={late}")
    check("stand-in: has_more is false when the page holds exactly the rest, true when one is left",
          p1["has_more"] is False and len(p1["data"]) == n_in and p2["has_more"] is True)
    code, page = http(api, "/v1/events?limit=100&type=customer.*")
    check("stand-in: type=customer.* (wildcard) filters by type",
          code == 200 and ids(page) == [e for e in ids_newest_first if by_id[e]["type"] == "customer.updated"] and ids(page))
    code, body = http(api, f"/v1/events/{ids_newest_first[7]}")
    code2, body2 = http(api, "/v1/events/evt_nosuchevent")
    check("stand-in: GET /v1/events/<id>, and 404 resource_missing for an unknown one",
          code == 200 and body["id"] == ids_newest_first[7] and code2 == 404 and body2["error"]["code"] == "resource_missing")

    # ------------------------------------------------------------ (a) wrong key, no key
    before = snapshot()
    rc, out, err, rows = sync(api, "--since", base - 1, key="sk_test_51WrongKeyForTheSyncAb12")
    check("(a) wrong key: exit 2, Stripe's 401 message printed",
          rc == 2 and "HTTP 401" in err and "Invalid API Key provided: sk_test_" in err and "Ab12" in err
          and "WrongKeyForTheSync" not in err + out, f"rc={rc} err={err.strip()}")
    check("(a) wrong key: nothing changed", snapshot() == before, diff(before, snapshot()))
    rc, out, err, rows = sync(api, "--since", base - 1, key=None)
    check("(a) no STRIPE_API_KEY: refuses to run, exit 2, nothing changed",
          rc == 2 and "STRIPE_API_KEY" in err and snapshot() == before, f"rc={rc} err={err.strip()}")

    # ------------------------------------------------------------ (b) failures after some work
    flaky = standin(events_path, "--fail-on", "3")
    rc, out, err, rows = sync(flaky, "--since", base - 1)
    check("(b) the API failing on the 3rd request (mid-paging): exit 2, HTTP 500 reported",
          rc == 2 and "HTTP 500" in err and not rows, f"rc={rc} err={err.strip()}")
    check("(b) the API failing mid-paging: nothing changed", snapshot() == before, diff(before, snapshot()))

    bad_path = os.path.join(work, "events-bad.json")
    not_an_event = {"id": "evt_1SnotAnEventAtAll", "object": "event", "created": events[-1]["created"] + 10,
                    "data": {"object": {"id": "cs_x"}}}  # no "type": ingest_fetched refuses it (BL012)
    write_events(bad_path, events + [not_an_event])
    badapi = standin(bad_path)
    rc, out, err, rows = sync(badapi, "--since", base - 1)
    check("(b) a body the database refuses after 150 good events (the newest, so the last handed in): exit 2, BL012 named",
          rc == 2 and "BL012" in err and "evt_1SnotAnEventAtAll" in err and "rolled back" in err, f"rc={rc} err={err.strip()}")
    check("(b) ... and the 150 events before it in the transaction are rolled back: nothing changed",
          snapshot() == before, diff(before, snapshot()))

    rc, out, err, rows = sync(api, "--since", base - 1, dsn=HOOK)
    check("(b) a login role granted billing_webhook only cannot sync: exit 2, permission denied, nothing changed",
          rc == 2 and "permission denied" in err and snapshot() == before, f"rc={rc} err={err.strip()}")
    rc, out, err, rows = sync(api, "--since", base - 1, endpoint="no-such-endpoint")
    check("(b) an unknown endpoint: exit 2, nothing changed",
          rc == 2 and "no-such-endpoint" in err and snapshot() == before, f"rc={rc} err={err.strip()}")

    # ------------------------------------------------------------ (c) the good run, with --since
    variants_before = before["variants"][0]
    rc, out, err, rows = sync(api, "--since", base - 1)
    expect = sorted(events, key=lambda e: (e["created"], e["id"]))
    got_status = {r[0]: r[2] for r in rows}
    check("(c) exit 1: committed, with the 2 events of the unlinked customer `failed`",
          rc == 1 and "2 event(s) stored as failed" in err, f"rc={rc} err={err.strip()[-500:]}")
    check("(c) one line per event, oldest first (created, then id), with its type",
          [r[0] for r in rows] == [e["id"] for e in expect] and all(r[1] == by_id[r[0]]["type"] for r in rows if r[0] in by_id),
          f"{len(rows)} lines; first {rows[:2]}")
    wrong_status = [(e["id"], expected_status(e), got_status.get(e["id"])) for e in events if got_status.get(e["id"]) != expected_status(e)]
    check(f"(c) the {len(delivered)} delivered events are `duplicate`, the {len(lost_idx)} missed ones applied/ignored/failed",
          not wrong_status, f"{len(wrong_status)} differ, e.g. {wrong_status[:3]}")
    summary = [l for l in out.splitlines() if l.startswith("summary:")]
    n_app = sum(1 for e in events if expected_status(e) == "applied")
    n_ign = sum(1 for e in events if expected_status(e) == "ignored")
    check("(c) a summary line with the count of each status",
          summary and f"events=350 applied={n_app} duplicate={len(delivered)} stale=0 ignored={n_ign} failed=2" in summary[0], f"{summary}")
    stored = dict(q("SELECT event_id, status FROM billing.events WHERE provider = 'stripe'"))
    final = {e["id"]: ("failed" if e["data"]["object"].get("customer") == "cus_synclate" else
                       "ignored" if e["type"] == "customer.updated" else "applied") for e in events}
    check("(c) all 350 events stored once, each applied / ignored / failed as it should",
          stored == final, f"{len(stored)} stored; {[(k, stored.get(k), v) for k, v in final.items() if stored.get(k) != v][:3]}")
    bal = {c: balance(c) for c in CUSTOMERS}
    check("(c) every balance equals the sum of that customer's top-ups (delivered + fetched)",
          bal == credits_of, f"got {bal}, want {credits_of}")
    st = status_row()
    want_st = (len(delivered), 350 - len(delivered), max(events[i]["created"] for i in delivered_idx),
               max(events[i]["created"] for i in lost_idx))
    check(f"(c) billing.sync_status: delivered={want_st[0]}, fetched={want_st[1]}, newest of each", st == want_st, f"got {st}, want {want_st}")
    ev0 = events[lost_idx[0]]
    body0 = q("SELECT body FROM billing.events WHERE event_id = %s", ev0["id"])
    check("(c) a fetched event is stored with the provider's JSON of that event", body0 and json.loads(body0[0][0]) == ev0)
    n_var = q("SELECT count(*) FROM billing.event_variants")[0][0] - variants_before
    print(f"info: (c) billing.event_variants rows added by fetching {len(delivered)} already-delivered events: {n_var}")
    check("(c) billing.verify() finds no inconsistency", q("SELECT count(*) FROM billing.verify()")[0][0] == 0)

    # ------------------------------------------------------------ (d) again, resuming from what is stored
    before = snapshot()
    rc, out, err, rows = sync(api)
    start = max(want_st[2], want_st[3]) - 3600
    in_window = [e["id"] for e in expect if e["created"] >= start]
    synced = q("SELECT extract(epoch FROM synced_through)::bigint FROM billing.sync_status WHERE endpoint = 'stripe-main'")[0][0]
    check("(d) the first run marked how far it got: synced_through is the newest event it handed in",
          synced == max(e["created"] for e in expect), f"{synced}")
    check("(d) a second run without --since starts where the last one got to, minus 3600 s",
          f"({start};" in err, err.strip()[:300])
    check("(d) ... brings only duplicates (the events of that last hour), exit 0",
          rc == 0 and [r[0] for r in rows] == in_window and rows and all(r[2] == "duplicate" for r in rows),
          f"rc={rc} {len(rows)} lines, want {len(in_window)}; {[r for r in rows if r[2] != 'duplicate'][:3]} {err.strip()[-300:]}")
    check("(d) ... and changes nothing", snapshot() == before, diff(before, snapshot()))

    # ------------------------------------------------------------ (e) a new event at Stripe
    new = topup(999, "sync-a", 777, events[-1]["created"] + 120)
    write_events(events_path, events + [new])
    rc, out, err, rows = sync(api)
    got = {r[0]: r[2] for r in rows}
    check("(e) an event appearing later is brought by the next run (applied), the rest duplicates, exit 0",
          rc == 0 and got.get(new["id"]) == "applied" and all(s == "duplicate" for k, s in got.items() if k != new["id"]),
          f"rc={rc} {rows[-3:]} {err.strip()[-300:]}")
    check("(e) ... its credits granted", balance("sync-a") == credits_of["sync-a"] + 777, f"{balance('sync-a')}")
    st = status_row()
    check("(e) ... sync_status: fetched +1, newest_fetched is its created",
          st == (want_st[0], want_st[1] + 1, want_st[2], new["created"]), f"{st}")

    # ------------------------------------------------------------ (f) its webhook arrives after the fetch
    before = snapshot()
    r = deliver(new)
    check("(f) the webhook of an event already fetched is a duplicate", r[1] == "duplicate", f"{r}")
    after = snapshot()
    check("(f) ... and changes no balance, journal or status", {k: v for k, v in after.items() if k != "variants"}
          == {k: v for k, v in before.items() if k != "variants"}, diff(before, after))

    # ------------------------------------------------------------ the waiting events, once linked
    linked = q("SELECT status FROM billing.link_customer('sync-late', 'cus_synclate')")
    check("linking the waiting customer applies its 2 failed events, in order",
          [s for (s,) in linked] == ["applied", "applied"] and balance("sync-late") == 550, f"{linked} {balance('sync-late')}")
    before = snapshot()
    rc, out, err, rows = sync(api, "--since", base - 1)
    check("a full re-run after all that: 351 duplicates, exit 0, nothing changed",
          rc == 0 and len(rows) == 351 and all(r[2] == "duplicate" for r in rows) and snapshot() == before,
          f"rc={rc} {len(rows)} {diff(before, snapshot())}")

    # ------------------------------------------------------------ (g) an outage, then deliveries resume
    # The endpoint was down: an event missed (Stripe gave up retrying it), then webhooks flow
    # again for hours before the next sync. The run must still reach back to the outage.
    t0 = new["created"] + 600
    gap = topup(1001, "sync-a", 31, t0)
    resumed = [topup(1002 + k, "sync-b", 1, t0 + 3 * 3600 + k) for k in range(3)]
    write_events(events_path, events + [new, gap] + resumed)
    for ev in resumed:
        deliver(ev)
    rc, out, err, rows = sync(api)
    got = {r[0]: r[2] for r in rows}
    check("(g) after an outage and hours of deliveries, the next run still brings the missed event",
          rc == 0 and got.get(gap["id"]) == "applied" and all(got.get(ev["id"]) == "duplicate" for ev in resumed),
          f"rc={rc} {got.get(gap['id'])} {err.strip()[-300:]}")
    check("(g) ... its credits granted", balance("sync-a") == credits_of["sync-a"] + 777 + 31, f"{balance('sync-a')}")
except Exception:
    import traceback
    traceback.print_exc()
    check("the test ran to its end", False, "an unexpected error (above)")
finally:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
    conn.close()

if failures:
    print(f"sync-test: {len(failures)} FAILED: {failures}")
    sys.exit(1)
print("sync-test: all passed")
PY
