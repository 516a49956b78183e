#!/usr/bin/python3
"""A local stand-in for the SIEM APIs that Tocsin's pollers query.

Honest mock: Elasticsearch, Splunk, Microsoft Sentinel (Azure AD + Log Analytics) and the
CrowdSec Local API cannot run inside the test sandbox, so this server replays the response
shapes those vendors document (hits.hits with sort values, newline-delimited export JSON,
OAuth2 token answers and query tables, LAPI alert arrays). It checks nothing itself: it answers
from a scenario file and records every request, and the C++ tests assert on that record (the
window asked for, auth headers, paging cursors, timing).

Usage: siem_mock.py SCENARIO.json REQUESTS.jsonl [--max-seconds N]

SCENARIO.json:
  {"routes": {"POST /alerts-*/_search": [RESPONSE, ...], "GET /v1/alerts": [...]}}
  Routes match "METHOD path" without the query string. Responses are given in order; the last
  one repeats once the list is used up. Unknown routes answer 404.
RESPONSE:
  {"status": 200, "headers": {"Retry-After": "1"}, and one body:
   "json": any JSON | "ndjson": [objects, one per line] | "body": "raw text"}
  A header value "@http-date+N" becomes an HTTP-date N seconds from now.

The first stdout line is the port (bound on 127.0.0.1, port 0). Each request is appended to
REQUESTS.jsonl as {"t", "method", "path", "query", "headers" (lower-case names), "body"}.
The server exits on SIGTERM, when its parent dies, or after --max-seconds (default 300), so a
crashed test cannot leave it behind.
"""

import email.utils
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 1 << 20


class Scenario:
    def __init__(self, path):
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        self.routes = {k: (v if isinstance(v, list) else [v])
                       for k, v in data.get("routes", {}).items()}
        self.served = {k: 0 for k in self.routes}
        self.lock = threading.Lock()

    def next_response(self, key):
        with self.lock:
            responses = self.routes.get(key)
            if not responses:
                return {"status": 404, "json": {"error": "no route for " + key}}
            i = min(self.served[key], len(responses) - 1)
            self.served[key] += 1
            return responses[i]


class Recorder:
    def __init__(self, path):
        self.file = open(path, "a", encoding="utf-8")
        self.lock = threading.Lock()

    def record(self, entry):
        with self.lock:
            self.file.write(json.dumps(entry) + "\n")
            self.file.flush()


def render_header(value):
    if isinstance(value, str) and value.startswith("@http-date+"):
        return email.utils.formatdate(time.time() + float(value[len("@http-date+"):]),
                                      usegmt=True)
    return str(value)


def render_body(resp):
    if "json" in resp:
        return json.dumps(resp["json"]).encode(), "application/json"
    if "ndjson" in resp:
        text = "".join(json.dumps(o) + "\n" for o in resp["ndjson"])
        return text.encode(), "application/json"
    return resp.get("body", "").encode(), "text/plain"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real APIs do

    def log_message(self, fmt, *args):
        pass

    def handle_any(self):
        t = time.time()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(min(length, MAX_BODY)) if length > 0 else b""
        path, _, query = self.path.partition("?")
        self.server.recorder.record({
            "t": t,
            "method": self.command,
            "path": path,
            "query": query,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body.decode("utf-8", "replace"),
        })
        resp = self.server.scenario.next_response(self.command + " " + path)
        payload, ctype = render_body(resp)
        self.send_response(int(resp.get("status", 200)))
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in resp.get("headers", {}).items():
            self.send_header(name, render_header(value))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = handle_any
    do_POST = handle_any
    do_DELETE = handle_any


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A poller hanging up mid-answer (its response-size cap) is expected, not news.
        err = sys.exc_info()[1]
        if not isinstance(err, (ConnectionResetError, BrokenPipeError)):
            sys.stderr.write("siem_mock: %r\n" % (err,))


def watchdog(parent, deadline):
    while time.time() < deadline and os.getppid() == parent:
        time.sleep(0.2)
    os._exit(0)


def main(argv):
    if len(argv) < 3:
        sys.stderr.write(__doc__)
        return 2
    max_seconds = 300.0
    if "--max-seconds" in argv:
        max_seconds = float(argv[argv.index("--max-seconds") + 1])
    server = Server(("127.0.0.1", 0), Handler)
    server.scenario = Scenario(argv[1])
    server.recorder = Recorder(argv[2])
    threading.Thread(target=watchdog, args=(os.getppid(), time.time() + max_seconds),
                     daemon=True).start()
    print(server.server_address[1], flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
