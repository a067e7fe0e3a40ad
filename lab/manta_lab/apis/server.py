"""The lab APIs process: SAPI, IMGAPI and VMAPI on three loopback ports.

    python -m manta_lab.apis --home <lab home>

One process, one store (``<home>/apis/``), three ``ThreadingHTTPServer``s
bound to 127.0.0.1 on ``cfg.port('sapi'|'imgapi'|'vmapi')``. This module holds
the HTTP plumbing shared by the three services (routing, body parsing the way
restify's parsers do it, the standard response headers, error bodies); the
services themselves are in sapi.py, imgapi.py and vmapi.py.
"""
import argparse
import json
import os
import re
import signal
import sys
import threading
import time
import traceback
import uuid as uuidlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from .. import config, procs
from . import errors
from .store import Store

HOST = "127.0.0.1"
MAX_JSON_BODY = 16 * 1024 * 1024
SERVER_NAME = os.uname().nodename


def log(msg):
    sys.stderr.write(time.strftime("%Y-%m-%dT%H:%M:%S") + " " + msg + "\n")
    sys.stderr.flush()


class Response:
    def __init__(self, status=200, body=None, headers=None):
        self.status = status
        self.body = body          # JSON-able, bytes, FileBody, or None
        self.headers = headers or {}


class FileBody:
    def __init__(self, path, size):
        self.path = path
        self.size = size


class Request:
    """What a route handler sees."""

    def __init__(self, handler, method, path, query, headers):
        self._h = handler
        self.method = method
        self.path = path
        self.query = query        # str -> str (first value)
        self.headers = headers
        self._raw = None
        self._json_done = False
        self._json = None
        self.consumed = False

    # ---- body ----------------------------------------------------------------
    def _chunks(self, chunk=1 << 20):
        rfile = self._h.rfile
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            while True:
                line = rfile.readline(65537)
                if not line:
                    raise errors.invalid_content("truncated chunked body")
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                left = size
                while left:
                    data = rfile.read(min(chunk, left))
                    if not data:
                        raise errors.invalid_content("truncated chunked body")
                    left -= len(data)
                    yield data
                rfile.readline(3)
        else:
            left = self.content_length or 0
            while left > 0:
                data = rfile.read(min(chunk, left))
                if not data:
                    break  # client closed early: the caller sees a short body
                left -= len(data)
                yield data
        self.consumed = True

    @property
    def content_length(self):
        cl = self.headers.get("Content-Length")
        if cl is None:
            return None
        try:
            return int(cl)
        except ValueError:
            raise errors.invalid_content(f"invalid Content-Length {cl!r}") from None

    def iter_body(self):
        """Stream the raw body (for uploads)."""
        return self._chunks()

    def raw(self):
        if self._raw is None:
            parts, total = [], 0
            for c in self._chunks():
                total += len(c)
                if total > MAX_JSON_BODY:
                    self._h.close_connection = True
                    raise errors.ApiError(413, "RequestEntityTooLarge",
                                          f"request body is larger than {MAX_JSON_BODY} bytes")
                parts.append(c)
            self._raw = b"".join(parts)
        return self._raw

    def json(self):
        """The parsed body as restify's bodyParser gives it (None when empty)."""
        if not self._json_done:
            raw = self.raw()
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            val = None
            if raw.strip():
                if ctype == "application/x-www-form-urlencoded":
                    val = {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace"),
                                                         keep_blank_values=True).items()}
                elif ctype in ("", "application/json", "text/plain") or ctype.endswith("+json"):
                    try:
                        val = json.loads(raw.decode("utf-8"))
                    except (ValueError, UnicodeDecodeError) as exc:
                        raise errors.invalid_content(f"Invalid JSON: {exc}") from None
            self._json, self._json_done = val, True
        return self._json

    def body_object(self):
        """The JSON body, which must be an object (restify mapParams)."""
        b = self.json()
        if b is None:
            return {}
        if not isinstance(b, dict):
            raise errors.invalid_content("Invalid JSON: the body must be a JSON object, "
                                         f"not {type(b).__name__}")
        return b

    # ---- params ---------------------------------------------------------------
    def params(self, query_wins):
        """Query string and JSON body merged as restify's mapParams does:
        SAPI parses the query first (query wins), VMAPI the body first."""
        body = self.body_object()
        if query_wins:
            return {**body, **self.query}
        return {**self.query, **body}

    @property
    def api_version(self):
        """Major version asked for by Accept-Version (1 when absent)."""
        v = self.headers.get("Accept-Version") or self.headers.get("X-Api-Version")
        if not v:
            return 1
        m = re.search(r"(\d+)", v)
        if not m:
            return 2 if v.strip() == "*" else 1
        return int(m.group(1))


class Service:
    """One API: a name, a port and its routes."""

    def __init__(self, name, server_header):
        self.name = name
        self.server_header = server_header
        self.routes = []  # (method, regex, fn, raw)

    def route(self, method, pattern, raw=False):
        rx = re.compile("^" + re.sub(r":(\w+)", r"(?P<\1>[^/]+)", pattern) + "/?$")

        def deco(fn):
            self.routes.append((method, rx, fn, raw))
            return fn
        return deco

    def add(self, method, pattern, fn, raw=False):
        self.route(method, pattern, raw)(fn)

    def find(self, method, path):
        allowed = []
        for m, rx, fn, raw in self.routes:
            mt = rx.match(path)
            if not mt:
                continue
            if m == method or (method == "HEAD" and m == "GET"):
                return fn, raw, {k: unquote(v) for k, v in mt.groupdict().items()}
            allowed.append(m)
        if allowed:
            raise errors.method_not_allowed(method)
        raise errors.no_route(path)


def make_handler(service):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = service.server_header
        sys_version = ""
        # A client that stops sending (e.g. a chunked body that never ends)
        # must not hold a server thread forever.
        timeout = 60

        def version_string(self):
            return service.server_header

        def log_message(self, fmt, *args):  # one line per request, in dispatch
            pass

        def _dispatch(self):
            t0 = time.monotonic()
            rid = self.headers.get("x-request-id") or str(uuidlib.uuid4())
            parts = urlsplit(self.path)
            path = parts.path or "/"
            query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
            req = Request(self, self.command, path, query, self.headers)
            raw_route = False
            try:
                fn, raw_route, args = service.find(self.command, path)
                if not raw_route:
                    req.raw()
                resp = fn(req, **args)
                if not isinstance(resp, Response):
                    resp = Response(*resp) if isinstance(resp, tuple) else Response(200, resp)
            except errors.ApiError as exc:
                resp = Response(exc.status, exc.body, exc.headers)
            except Exception as exc:  # a bug: answer 500 and log the traceback
                log(f"{service.name}: {self.command} {self.path}: "
                    + "".join(traceback.format_exception(exc)))
                resp = Response(500, {"code": "InternalError", "message": str(exc)})
            if not req.consumed and (req.content_length or
                                     "chunked" in (self.headers.get("Transfer-Encoding") or "")):
                self.close_connection = True  # unread body: do not reuse the connection
            self._send(resp, rid, t0)
            log(f"{service.name} {self.command} {self.path} -> {resp.status} "
                f"({(time.monotonic() - t0) * 1000:.0f} ms)")

        def _send(self, resp, rid, t0):
            body = resp.body
            headers = dict(resp.headers)
            data = None
            if isinstance(body, FileBody):
                length = body.size
            elif isinstance(body, (bytes, bytearray)):
                data = bytes(body)
                length = len(data)
            elif body is None or resp.status in (204, 304):
                data = b""
                length = 0
            else:
                data = json.dumps(body, separators=(",", ":")).encode()
                length = len(data)
                headers.setdefault("Content-Type", "application/json")
            self.send_response(resp.status)
            headers.setdefault("x-request-id", rid)
            headers.setdefault("x-server-name", SERVER_NAME)
            headers["x-response-time"] = str(int((time.monotonic() - t0) * 1000))
            if resp.status not in (204, 304):
                headers["Content-Length"] = str(length)
            if self.close_connection:
                headers["Connection"] = "close"
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            if self.command == "HEAD" or resp.status in (204, 304):
                return
            if isinstance(body, FileBody):
                with open(body.path, "rb") as fh:
                    while True:
                        chunk = fh.read(1 << 20)
                        if not chunk:
                            break
                        self.wfile.write(chunk)
            else:
                self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _dispatch

    return Handler


class LabHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class App:
    """Everything one APIs process holds: config, store and the three services."""

    def __init__(self, cfg):
        from . import imgapi, sapi, vmapi
        self.cfg = cfg
        self.store = Store(cfg.path("apis"))
        self.imgapi = imgapi.Imgapi(self)
        self.vmapi = vmapi.Vmapi(self)
        self.sapi = sapi.Sapi(self)
        self.services = {"sapi": self.sapi.service, "imgapi": self.imgapi.service,
                         "vmapi": self.vmapi.service}

    def start_background(self):
        self.vmapi.jobs.recover()

    def close(self):
        self.vmapi.jobs.shutdown()
        self.store.close()


def serve(cfg):
    app = App(cfg)
    servers = []
    try:
        for name, svc in app.services.items():
            port = cfg.port(name)
            try:
                srv = LabHTTPServer((HOST, port), make_handler(svc))
            except OSError as exc:
                raise config.LabError("apis", f"cannot listen on {HOST}:{port} for {name}: {exc}")
            servers.append(srv)
    except BaseException:
        for s in servers:
            s.server_close()
        app.close()
        raise
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threads = []
    for srv in servers:
        t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
        t.start()
        threads.append(t)
    app.start_background()
    log(f"apis: pid {os.getpid()} serving sapi :{cfg.port('sapi')}, imgapi :{cfg.port('imgapi')}, "
        f"vmapi :{cfg.port('vmapi')} (store {cfg.path('apis')})")
    while not stop.wait(1.0):
        procs.reap()  # zones provisioned from here are our children until they exit
    log("apis: stopping")
    for srv in servers:
        srv.shutdown()
        srv.server_close()
    app.close()
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m manta_lab.apis")
    ap.add_argument("--home", required=True, help="the lab home (holds lab.json)")
    args = ap.parse_args(argv)
    cfg = config.load(args.home)
    try:
        return serve(cfg)
    except config.LabError as exc:
        log(str(exc))
        return 1
