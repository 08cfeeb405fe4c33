#!/usr/bin/env python3
"""Reconciliation: bring the Stripe events that webhooks did not deliver into the ledger.

Stripe keeps events for 30 days and gives up on a failing endpoint after 3 days; this tool
reads them back from Stripe's API (GET /v1/events) and hands each to
billing.ingest_fetched(endpoint, body), which stores and applies it exactly as a delivery
would. An event already delivered (or already fetched) comes back `duplicate` and changes
nothing, so the tool is safe to run again and from cron.

    pip install "psycopg[binary]"
    export STRIPE_API_KEY=rk_live_...   # a restricted key with "Events: Read" and nothing else
    python3 scripts/stripe-sync.py --dsn "host=... dbname=app user=stripe_sync" --endpoint stripe-main

Run it as a login role granted billing_sync, which may call ingest_fetched and read
billing.sync_status and nothing else:

    CREATE ROLE stripe_sync LOGIN PASSWORD '...' IN ROLE billing_sync;

    # crontab: every 15 minutes (any interval works: each run starts where the last got to)
    */15 * * * * STRIPE_API_KEY=rk_live_... python3 /opt/billing/stripe-sync.py --dsn "..." --endpoint stripe-main

Where it starts: --since UNIX_TS if given; else where the last committed run got to
(`synced_through` in billing.sync_status: the newest event a run handed in) minus --margin
seconds (default 3600: events are listed by their `created`, which a late one may predate);
else, for an endpoint never synced, 30 days ago (all Stripe keeps). Not the newest event
stored: while webhooks flow that is about now, and events of an outage that Stripe stopped
retrying would never be looked at. So any interval works; a first run reads 30 days.

What it does: pages through GET {api-base}/v1/events?limit=100&created[gte]=<start> with
starting_after until has_more is false, then, in ONE database transaction, hands every event
to billing.ingest_fetched oldest first (by created, then id), printing one line per event
(`<event id> <type> <status> <detail>`) and a summary line with the count of each status.

Exit status:
  0  every event stored (applied, duplicate, stale or ignored)
  1  committed, but some events ended `failed` (stored; they apply when their customer is
     linked, or with billing.replay_failed()): worth an alert
  2  nothing changed: a Stripe API error (its message is printed; 401 is a wrong key), a
     network error, or a database error (the transaction is rolled back); or bad arguments
"""
import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter

import psycopg

PAGE = 100  # Stripe's largest page
RETENTION = 30 * 86400  # Stripe lists events of the last 30 days
USER_AGENT = "billing-stripe-sync/1.0 (+postgres extension billing)"


class SyncError(Exception):
    """A failure that leaves the database unchanged: exit 2."""


def log(msg):
    print(f"stripe-sync: {msg}", file=sys.stderr, flush=True)


def raw_list_elements(text):
    """The `data` array of a Stripe list response: (parsed object, its exact JSON text) pairs.

    Walks the top-level object with the standard library's own scanner (JSONDecoder.raw_decode
    returns where each value ends), so each element's text is a slice of the response as the
    server sent it. Returns (elements, the whole response parsed).
    """
    dec = json.JSONDecoder()
    ws = " \t\r\n"

    def skip(i):
        while i < len(text) and text[i] in ws:
            i += 1
        return i

    def expect(i, ch):
        i = skip(i)
        if i >= len(text) or text[i] != ch:
            raise ValueError(f"expected {ch!r} at offset {i}")
        return i + 1

    whole = {}
    elements = None
    i = expect(0, "{")
    i = skip(i)
    if i < len(text) and text[i] == "}":
        i += 1
    else:
        while True:
            i = skip(i)
            key, i = dec.raw_decode(text, i)
            if not isinstance(key, str):
                raise ValueError("object key is not a string")
            i = expect(i, ":")
            i = skip(i)
            if key == "data" and i < len(text) and text[i] == "[":
                elements = []
                i = skip(i + 1)
                if text[i] == "]":
                    i += 1
                else:
                    while True:
                        i = skip(i)
                        start = i
                        obj, i = dec.raw_decode(text, i)
                        elements.append((obj, text[start:i]))
                        i = skip(i)
                        if text[i] == ",":
                            i += 1
                            continue
                        i = expect(i, "]")
                        break
                whole[key] = [o for o, _ in elements]
            else:
                whole[key], i = dec.raw_decode(text, i)
            i = skip(i)
            if text[i] == ",":
                i += 1
                continue
            i = expect(i, "}")
            break
    if skip(i) != len(text):
        raise ValueError("trailing data after the JSON object")
    if elements is None:
        raise ValueError("no \"data\" array")
    return elements, whole


def stripe_get(api_base, key, params, timeout):
    url = f"{api_base.rstrip('/')}/v1/events?{urllib.parse.urlencode(params)}"
    req = urllib.request.Request(url, headers={
        "Authorization": f"Bearer {key}",
        "Accept": "application/json",
        "User-Agent": USER_AGENT,
    })
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            err = json.loads(body)["error"]
            what = f"{err.get('type', 'error')}: {err.get('message', '')}"
        except (ValueError, KeyError, TypeError):
            what = body[:300].decode("utf-8", "replace").strip() or e.reason
        rid = e.headers.get("Request-Id") if e.headers else None
        hint = " (check STRIPE_API_KEY)" if e.code == 401 else ""
        raise SyncError(f"Stripe API error: HTTP {e.code} from GET /v1/events{hint}: {what}"
                        + (f" [request {rid}]" if rid else "")) from None
    except (urllib.error.URLError, OSError) as e:  # refused, DNS, TLS, timeout
        raise SyncError(f"cannot reach the Stripe API at {api_base}: {getattr(e, 'reason', e)}") from None
    try:
        text = raw.decode("utf-8")
        elements, whole = raw_list_elements(text)
    except (UnicodeDecodeError, ValueError) as e:
        raise SyncError(f"the Stripe API answered GET /v1/events with something that is not a list of events: {e}") from None
    if whole.get("object") != "list" or not isinstance(whole.get("has_more"), bool):
        raise SyncError("the Stripe API answered GET /v1/events with something that is not a list of events")
    return elements, whole["has_more"]


def fetch_events(api_base, key, since, timeout):
    """Every event created at or after `since`, as {id: (created, type, raw text)}."""
    found = {}
    params = {"limit": PAGE, "created[gte]": since}
    pages = 0
    while True:
        elements, has_more = stripe_get(api_base, key, params, timeout)
        pages += 1
        for obj, raw in elements:
            if not isinstance(obj, dict) or not isinstance(obj.get("id"), str) or not isinstance(obj.get("created"), int):
                raise SyncError(f"the Stripe API listed something that is not an event: {raw[:200]}")
            # The body handed to ingest_fetched is the element's raw text, not json.dumps(obj):
            # it is the provider's own rendering of the event, byte for byte (as a webhook's
            # body is stored as delivered). Re-serializing would store a text Stripe never
            # sent: another spelling of numbers (1.50 -> 1.5, 1e2 -> 100.0, big decimals
            # rounded through a float), \\u escapes for non-ASCII text, key order and spacing of
            # our choosing, so the stored body could not be compared with what the API serves.
            # Neither form is byte-equal to the webhook delivery of the same event (other
            # indentation, and `pending_webhooks` changes over time): duplicates are found by the
            # event id, as the contract says.
            found.setdefault(obj["id"], (obj["created"], str(obj.get("type", "")), raw))
        if not has_more:
            break
        if not elements:
            raise SyncError("the Stripe API said has_more but listed no events")
        last = elements[-1][0]["id"]
        if params.get("starting_after") == last:
            raise SyncError(f"the Stripe API returned the same page twice (after {last})")
        params["starting_after"] = last
    return found, pages


def start_from(conn, endpoint, margin, since):
    """Where to start: `since` if given, else from what is stored. Checks the endpoint (and
    that this role may read billing.sync_status) before anything is asked of Stripe."""
    row = conn.execute(
        "SELECT provider, synced_through FROM billing.sync_status WHERE endpoint = %s",
        (endpoint,),
    ).fetchone()
    if row is None:
        raise SyncError(f"unknown webhook endpoint \"{endpoint}\" (billing.sync_status has no row for it; "
                        "see billing.add_endpoint)")
    provider, synced = row
    if provider != "stripe":
        raise SyncError(f"endpoint \"{endpoint}\" is a {provider} endpoint, not a stripe one")
    if since is not None:
        return since, "--since"
    now = int(time.time())
    if synced is None:
        return now - RETENTION, "never synced: all Stripe keeps (30 days)"
    since = int(synced.timestamp()) - margin
    return since, f"synced through {synced.isoformat()} minus {margin} s"


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Fetch Stripe events (GET /v1/events) into billing.ingest_fetched; API key in STRIPE_API_KEY.")
    ap.add_argument("--dsn", required=True, help="libpq connection string (a login role granted billing_sync)")
    ap.add_argument("--endpoint", required=True, help="the billing endpoint the events belong to (billing.add_endpoint)")
    ap.add_argument("--api-base", default="https://api.stripe.com", help="default https://api.stripe.com")
    ap.add_argument("--since", type=int, metavar="UNIX_TS", help="fetch events created at or after this time")
    ap.add_argument("--margin", type=int, default=3600, metavar="SECONDS",
                    help="without --since: how far before synced_through to start (default 3600)")
    ap.add_argument("--timeout", type=float, default=60, help="seconds per HTTP request (default 60)")
    args = ap.parse_args(argv)

    key = os.environ.get("STRIPE_API_KEY", "").strip()
    if not key:
        log("STRIPE_API_KEY is not set: give it a restricted key that can read events (rk_...)")
        return 2
    if args.margin < 0:
        log("--margin must not be negative")
        return 2

    conn = None
    current, committing = None, False  # the event being ingested; whether COMMIT was under way
    try:
        conn = psycopg.connect(args.dsn, autocommit=True, application_name="stripe-sync")
        since, why = start_from(conn, args.endpoint, args.margin, args.since)
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since))
        log(f"endpoint {args.endpoint}: events created since {started} ({since}; {why}) from {args.api_base}")

        # Every page first, then one transaction: a failure while paging changes nothing, and
        # the transaction holds no lock while waiting on the network.
        found, pages = fetch_events(args.api_base, key, since, args.timeout)
        order = sorted(found.items(), key=lambda kv: (kv[1][0], kv[0]))  # oldest first: created, then id
        log(f"{len(order)} events in {pages} page(s); ingesting oldest first in one transaction")

        counts = Counter()
        lines = []
        with conn.transaction():  # BEGIN ... COMMIT (the connection is in autocommit mode)
            for current, (_created, kind, raw) in order:
                event_id, status, detail = conn.execute(
                    "SELECT event_id, status, detail FROM billing.ingest_fetched(%s, %s)", (args.endpoint, raw)
                ).fetchone()
                counts[status] += 1
                # printed once committed: until then, nothing is stored
                lines.append(f"{event_id or current} {kind} {status} {detail or ''}".rstrip())
            current, committing = None, True
        committing = False
        for line in lines:
            print(line)
    except SyncError as e:
        log(f"{e}; nothing was changed")
        return 2
    except psycopg.Error as e:
        state = getattr(e, "sqlstate", None)
        msg = str(e).strip().replace("\n", " | ")
        where = f" at event {current}" if current else ""
        if committing:
            outcome = "the connection failed during COMMIT: whether it committed is unknown; running again is safe"
        else:
            outcome = "rolled back, nothing was changed"
        log(f"database error{f' {state}' if state else ''}{where}: {msg}; {outcome}")
        return 2
    finally:
        if conn is not None:
            conn.close()

    summary = " ".join(f"{s}={counts[s]}" for s in ("applied", "duplicate", "stale", "ignored", "failed"))
    others = " ".join(f"{s}={n}" for s, n in sorted(counts.items())
                      if s not in ("applied", "duplicate", "stale", "ignored", "failed"))
    print(f"summary: endpoint={args.endpoint} since={since} events={len(order)} {summary}" + (f" {others}" if others else ""))
    if counts["failed"]:
        log(f"{counts['failed']} event(s) stored as failed (see billing.events, status 'failed'): "
            "they apply once their customer is linked, or with billing.replay_failed()")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
