#!/usr/bin/env python3
"""A minimal webhook receiver for the billing extension.

It holds no secret and does one thing: hand the raw body and headers to the database,
which verifies, stores once and applies the event in one transaction. 2xx when that
committed, 400 when the database refused the delivery (bad signature, stale timestamp,
not an event: the provider retries or gives up), 500 when the database is unreachable.

    pip install "psycopg[binary]"
    python3 scripts/receiver.py --dsn "host=/tmp/... port=54321 dbname=billing_demo user=receiver" --port 8080
    stripe listen --forward-to localhost:8080/webhooks/stripe-main

POST /webhooks/<endpoint> -> SELECT * FROM billing.ingest(<endpoint>, <headers>, <body>)
Run it as a login role granted billing_webhook.
"""
import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg

MAX_BODY = 1 << 20


def make_handler(dsn):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            parts = self.path.strip("/").split("/")
            if len(parts) != 2 or parts[0] != "webhooks":
                return self.reply(404, {"error": "POST /webhooks/<endpoint>"})
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                return self.reply(413, {"error": "body too large"})
            raw = self.rfile.read(length)
            try:
                body = raw.decode("utf-8")  # byte for byte: the signature covers it
            except UnicodeDecodeError:
                return self.reply(400, {"error": "body is not UTF-8"})
            headers = {k: v for k, v in self.headers.items()}
            try:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    row = conn.execute(
                        "SELECT event_id, status, detail FROM billing.ingest(%s, %s::jsonb, %s)",
                        (parts[1], json.dumps(headers), body),
                    ).fetchone()
            except psycopg.errors.Error as e:
                state = getattr(e, "sqlstate", None) or ""
                code = 400 if state.startswith("BL01") else 500
                return self.reply(code, {"error": str(e).splitlines()[0], "sqlstate": state})
            except psycopg.OperationalError as e:
                return self.reply(500, {"error": str(e)})
            self.reply(200, {"event_id": row[0], "status": row[1], "detail": row[2]})

        def reply(self, code, payload):
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt, *args):
            pass

    return Handler


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    a = ap.parse_args()
    ThreadingHTTPServer((a.host, a.port), make_handler(a.dsn)).serve_forever()


if __name__ == "__main__":
    main()
