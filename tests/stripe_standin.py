#!/usr/bin/env python3
"""A local stand-in for Stripe's List Events API, for tests and demos (standard library only).

    python3 tests/stripe_standin.py EVENTS.json [--port 0] [--key sk_test_standin] [--fail-on N]

EVENTS.json is a JSON list of full Stripe event objects. The file is read again whenever it
changes on disk, so a test makes a new event "happen" by rewriting the file. It listens on
127.0.0.1 (port 0: any free port) and prints one line, flushed:

    stripe-standin listening on http://127.0.0.1:<port>

What it serves, as Stripe's API reference describes it:

  GET /v1/events            newest first (by `created`; events of one second by id, descending,
                            so the order is total and stable);
                            limit (default 10, 1..100), starting_after / ending_before (event
                            ids; mutually exclusive; an unknown id is a 400 resource_missing),
                            created=<ts> or created[gt|gte|lt|lte]=<ts>, type (with `*` as a
                            wildcard, e.g. `invoice.*`) or types[]=... (not both);
                            answers {"object": "list", "url": "/v1/events", "has_more", "data"}.
  GET /v1/events/<id>       one event, or 404 resource_missing.

  Cursors work as Stripe's do: starting_after=X gives the `limit` events listed after X (older);
  ending_before=X gives the `limit` events listed just before X (newer), still newest first, and
  has_more then says whether there are newer ones still. A cursor keeps its place in the list
  whatever the filters: it need not match them itself.

  Auth: `Authorization: Bearer <key>`, or HTTP basic with the key as the user name (as `curl -u
  sk_test_...:` sends it). No key, or another key: 401 with Stripe's error body
  {"error": {"message": ..., "type": "invalid_request_error"}}; an invalid key is named in the
  message with all but its prefix and last four characters masked, as Stripe does.

  Errors are Stripe's shape: {"error": {"type": "invalid_request_error", "message": ...,
  "param": ..., "code": ...}} with 400 for a bad parameter, 404 for an unknown URL or id.

  --fail-on N [N ...]: answer the Nth request (counting every request from 1) with HTTP 500 and
  Stripe's api_error body, to test a client's failure path.
"""
import argparse
import base64
import binascii
import fnmatch
import json
import os
import re
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit, unquote

MAX_LIMIT = 100
DEFAULT_LIMIT = 10
KNOWN_PARAMS = {"limit", "starting_after", "ending_before", "created", "type", "types", "delivery_success", "expand"}


class StripeError(Exception):
    def __init__(self, status, message, type_="invalid_request_error", param=None, code=None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self):
        err = {"message": self.message, "type": self.type}
        if self.param is not None:
            err["param"] = self.param
        if self.code is not None:
            err["code"] = self.code
            err["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        return {"error": err}


def mask_key(key):
    """Stripe names a rejected key by its prefix (sk_test_, rk_live_, ...) and last 4 characters."""
    m = re.match(r"^((?:sk|rk|pk)_(?:test|live)_)", key)
    prefix = m.group(1) if m else ""
    rest = key[len(prefix):]
    if len(rest) <= 4:
        return prefix + "*" * len(rest)
    return prefix + "*" * (len(rest) - 4) + rest[-4:]


class EventStore:
    """The events of a JSON file, sorted newest first, re-read when the file changes."""

    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()
        self.stamp = None
        self.events = []  # newest first
        self.by_id = {}
        self.reload()

    @staticmethod
    def order_key(ev):
        return (int(ev["created"]), str(ev["id"]))

    def reload(self):
        st = os.stat(self.path)
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self.stamp:
            return
        with open(self.path, "rb") as f:
            events = json.load(f)
        if not isinstance(events, list):
            raise ValueError(f"{self.path}: expected a JSON list of event objects")
        by_id = {}
        for ev in events:
            if not isinstance(ev, dict) or not isinstance(ev.get("id"), str) or not isinstance(ev.get("created"), int):
                raise ValueError(f"{self.path}: every event needs a string id and an integer created: {ev!r:.200}")
            if ev["id"] in by_id:
                raise ValueError(f"{self.path}: event id {ev['id']} appears twice")
            by_id[ev["id"]] = ev
        self.events = sorted(events, key=self.order_key, reverse=True)
        self.by_id = by_id
        self.stamp = stamp

    def snapshot(self):
        with self.lock:
            try:
                self.reload()
            except (OSError, ValueError) as e:  # a file being rewritten: keep the last good list
                print(f"stripe-standin: keeping the previous events: {e}", file=sys.stderr)
            return self.events, self.by_id


def parse_int(params, name):
    v = params[name]
    if not re.fullmatch(r"-?\d+", v.strip()):
        raise StripeError(400, f"Invalid integer: {v}", param=name)
    return int(v)


def collect_params(query):
    """Stripe's form encoding: created[gte]=1, types[]=a, types[0]=a, expand[]=x."""
    flat, arrays = {}, {}
    for k, v in parse_qsl(query, keep_blank_values=True):
        m = re.fullmatch(r"([a-z_]+)\[(\d*)\]", k)
        if m and m.group(1) in ("types", "expand"):
            arrays.setdefault(m.group(1), []).append(v)
            continue
        if k in flat:
            raise StripeError(400, f"Received repeated parameter: {k}", param=k)
        flat[k] = v
    for k in list(flat) + list(arrays):
        base = k.split("[", 1)[0]
        if base not in KNOWN_PARAMS:
            raise StripeError(400, f"Received unknown parameter: {k}", param=k)
    return flat, arrays


def list_events(query, events, by_id):
    params, arrays = collect_params(query)

    limit = DEFAULT_LIMIT
    if "limit" in params:
        limit = parse_int(params, "limit")
        if limit < 1:
            raise StripeError(400, "This value must be greater than or equal to 1.", param="limit")
        if limit > MAX_LIMIT:
            raise StripeError(400, f"This value must be less than or equal to {MAX_LIMIT}.", param="limit")

    # created: a timestamp (exact) or a range of gt/gte/lt/lte
    bounds = []
    for k in params:
        if k == "created" or k.startswith("created["):
            op = "eq" if k == "created" else k[len("created["):-1]
            if op not in ("eq", "gt", "gte", "lt", "lte") or (k != "created" and not k.endswith("]")):
                raise StripeError(400, f"Received unknown parameter: {k}", param=k)
            bounds.append((op, parse_int(params, k)))
    ops = {"eq": lambda c, t: c == t, "gt": lambda c, t: c > t, "gte": lambda c, t: c >= t,
           "lt": lambda c, t: c < t, "lte": lambda c, t: c <= t}

    if "type" in params and "types" in arrays:
        raise StripeError(400, "You may pass either type or types, but not both.", param="types")
    if "types" in arrays and len(arrays["types"]) > 20:
        raise StripeError(400, "You may pass at most 20 types.", param="types")

    def wanted(ev):
        for op, t in bounds:
            if not ops[op](int(ev["created"]), t):
                return False
        if "type" in params and not fnmatch.fnmatchcase(str(ev.get("type")), params["type"]):
            return False
        if "types" in arrays and ev.get("type") not in arrays["types"]:
            return False
        if "delivery_success" in params:
            pass  # the stand-in keeps no delivery record: every event matches
        return True

    after, before = params.get("starting_after"), params.get("ending_before")
    if after is not None and before is not None:
        raise StripeError(400, "You may only specify one of these parameters: ending_before, starting_after.",
                          param="ending_before")
    for name, cursor in (("starting_after", after), ("ending_before", before)):
        if cursor is not None and cursor not in by_id:
            raise StripeError(400, f"No such event: '{cursor}'", param=name, code="resource_missing")

    key = EventStore.order_key
    if before is not None:
        pivot = key(by_id[before])
        newer = [ev for ev in events if key(ev) > pivot and wanted(ev)]  # newest first
        page = newer[-limit:]  # the `limit` events closest to the cursor
        has_more = len(newer) > len(page)
    else:
        if after is not None:
            pivot = key(by_id[after])
            rest = (ev for ev in events if key(ev) < pivot)
        else:
            rest = iter(events)
        page, has_more = [], False
        for ev in rest:
            if not wanted(ev):
                continue
            if len(page) == limit:
                has_more = True
                break
            page.append(ev)
    return {"object": "list", "data": page, "has_more": has_more, "url": "/v1/events"}


def make_handler(store, key, fail_on, counter):
    class Handler(BaseHTTPRequestHandler):
        server_version = "stripe-standin"
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet: tests read stdout/stderr
            if os.environ.get("STANDIN_LOG"):
                sys.stderr.write("stripe-standin: " + (fmt % args) + "\n")

        def do_GET(self):
            self.handle_request("GET")

        def do_POST(self):
            self.handle_request("POST")

        def do_DELETE(self):
            self.handle_request("DELETE")

        def handle_request(self, method):
            with counter["lock"]:
                counter["n"] += 1
                n = counter["n"]
            # a body the client sent is read and ignored, so the connection stays usable
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            try:
                if n in fail_on:
                    raise StripeError(500, "An unknown error occurred (the stand-in was told to fail "
                                           f"request {n}).", type_="api_error")
                self.authenticate()
                url = urlsplit(self.path)
                path = url.path.rstrip("/")
                events, by_id = store.snapshot()
                if method == "GET" and path == "/v1/events":
                    return self.reply(200, list_events(url.query, events, by_id))
                m = re.fullmatch(r"/v1/events/([^/]+)", path)
                if method == "GET" and m:
                    ev_id = unquote(m.group(1))
                    if ev_id not in by_id:
                        raise StripeError(404, f"No such event: '{ev_id}'", param="id", code="resource_missing")
                    return self.reply(200, by_id[ev_id])
                raise StripeError(404, f"Unrecognized request URL ({method}: {url.path}). Please see "
                                       "https://stripe.com/docs or we can help at https://support.stripe.com/.")
            except StripeError as e:
                extra = {"WWW-Authenticate": 'Basic realm="Stripe"'} if e.status == 401 else {}
                self.reply(e.status, e.body(), extra)

        def authenticate(self):
            auth = self.headers.get("Authorization")
            given = None
            if auth:
                scheme, _, cred = auth.strip().partition(" ")
                cred = cred.strip()
                if scheme.lower() == "bearer":
                    given = cred
                elif scheme.lower() == "basic":
                    try:
                        given = base64.b64decode(cred, validate=True).decode("utf-8").partition(":")[0]
                    except (binascii.Error, UnicodeDecodeError):
                        given = cred
            if not given:
                raise StripeError(401, "You did not provide an API key. You need to provide your API key in "
                                       "the Authorization header, using Bearer auth (e.g. 'Authorization: "
                                       "Bearer YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication "
                                       "for details, or we can help at https://support.stripe.com/.")
            if given != key:
                raise StripeError(401, f"Invalid API Key provided: {mask_key(given)}")

        def reply(self, status, payload, extra_headers=None):
            # Stripe pretty-prints its JSON, two spaces per level
            data = (json.dumps(payload, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Request-Id", "req_" + uuid.uuid4().hex[:14])
            for k, v in (extra_headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

    return Handler


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("events", help="a JSON file: a list of Stripe event objects")
    ap.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port, printed)")
    ap.add_argument("--key", default=os.environ.get("STANDIN_API_KEY", "sk_test_standin"),
                    help="the one API key accepted (default $STANDIN_API_KEY or sk_test_standin)")
    ap.add_argument("--fail-on", type=int, nargs="*", default=[], metavar="N",
                    help="answer the Nth request (from 1) with HTTP 500")
    args = ap.parse_args(argv)

    store = EventStore(args.events)
    counter = {"n": 0, "lock": threading.Lock()}
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(store, args.key, set(args.fail_on), counter))
    server.daemon_threads = True
    print(f"stripe-standin listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
