"""The lab's moray / electric-moray wire protocol: JSON over HTTP, one POST per RPC.

Real moray and electric-moray speak node-fast over TCP. The lab keeps their
RPC names, arguments, results and error names, but carries each RPC as one
HTTP request (see docs/lab-dataplane.md, "Wire protocol"):

    POST /<rpc>   body: JSON object of the RPC's arguments
    200           body: JSON result
    4xx/5xx       body: {"name": "<ErrorName>", "message": "...", "context": {}, "info": {}}

RPCs: putObject, getObject, delObject, findObjects, batch, sql, getTokens
(electric-moray only), plus ``GET /ping``.

This module holds both halves: `RpcServer` (a threaded HTTP server that
dispatches to ``rpc_<name>`` methods of a handler object) and `Client`
(a small keep-alive client used by seed, load, minnow, the tests and the
collection's tests).
"""
import http.client
import json
import select
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

RPCS = ("putObject", "getObject", "delObject", "findObjects", "batch", "sql",
        "getTokens", "updateObjects", "deleteMany")

# HTTP status per error name; anything unlisted is 500.
STATUS = {
    "InvocationError": 400,
    "InvalidQueryError": 400,
    "NotIndexedError": 400,
    "BucketNotFoundError": 404,
    "ObjectNotFoundError": 404,
    "EtagConflictError": 409,
    "UniqueAttributeError": 409,
    "ReadOnlyError": 503,
    "NoDatabasePeersError": 503,
    "NoDatabaseError": 503,
    "NoBackendsError": 503,
    "QueryTimeoutError": 504,
}

_MISSING = object()


class RpcError(Exception):
    """An RPC failure, carrying the server's error name (``err.name``)."""

    def __init__(self, name, message, status=500, context=None, info=None):
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message
        self.status = status
        self.context = context or {}
        self.info = info or {}

    def to_wire(self):
        return {"name": self.name, "message": self.message,
                "context": self.context, "info": self.info}

    @classmethod
    def from_wire(cls, body, status):
        return cls(body.get("name") or "Error", body.get("message") or "", status,
                   body.get("context"), body.get("info"))


def error(name, message, context=None, info=None):
    """Build an RpcError with the status the lab uses for that name."""
    return RpcError(name, message, STATUS.get(name, 500), context, info)


# ---- moray value conventions ------------------------------------------------

def value_string(value):
    """The `_value` text moray stores: JSON.stringify of the value (compact)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def etag_of(value_str):
    """Moray's `_etag`: upper-case hex CRC32 of the `_value` string (8 digits)."""
    return "%08X" % (zlib.crc32(value_str.encode("utf-8")) & 0xFFFFFFFF)


# ---- server -------------------------------------------------------------------

def _default(o):
    """JSON for what PostgreSQL hands back through sql/findObjects."""
    import datetime
    import decimal
    if isinstance(o, decimal.Decimal):
        return int(o) if o == o.to_integral_value() else float(o)
    if isinstance(o, (datetime.datetime, datetime.date)):
        return o.isoformat()
    if isinstance(o, (bytes, memoryview)):
        return bytes(o).decode("utf-8", "replace")
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "manta-lab-rpc/1"

    def log_message(self, fmt, *args):  # quiet: the process log stays readable
        if self.server.verbose:
            super().log_message(fmt, *args)

    def _send(self, status, body):
        data = json.dumps(body, separators=(",", ":"), default=_default).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        fn = self.server.gets.get(path)
        if fn is None:
            self._send(404, error("ResourceNotFound", f"{path} does not exist").to_wire())
            return
        try:
            self._send(200, fn())
        except RpcError as exc:
            self._send(exc.status, exc.to_wire())
        except Exception as exc:  # noqa: BLE001 - reported to the client
            self._send(500, error("InternalError", repr(exc)).to_wire())

    def do_POST(self):
        name = self.path.split("?", 1)[0].lstrip("/")
        try:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b"{}"
            try:
                args = json.loads(raw or b"{}")
            except ValueError as exc:
                raise error("InvocationError", f"{name}: body is not JSON: {exc}") from None
            if not isinstance(args, dict):
                raise error("InvocationError", f"{name}: body must be a JSON object")
            fn = getattr(self.server.rpc_handler, "rpc_" + name, None) if name in RPCS else None
            if fn is None:
                raise error("InvocationError", f"unknown RPC {name!r}")
            result = fn(args)
            self._send(200, result if result is not None else {})
        except RpcError as exc:
            self._send(exc.status, exc.to_wire())
        except Exception as exc:  # noqa: BLE001 - reported to the client
            self.server.log_exception(name, exc)
            self._send(500, error("InternalError", f"{type(exc).__name__}: {exc}").to_wire())


class RpcServer(ThreadingHTTPServer):
    """Threaded HTTP server dispatching ``POST /<rpc>`` to ``handler.rpc_<rpc>(args)``.

    ``gets`` maps extra GET paths (``/ping``, ``/status``) to callables
    returning JSON-able results.
    """
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, host, port, handler, gets=None, verbose=False):
        self.rpc_handler = handler
        self.gets = {"/ping": lambda: {"ok": True}}
        self.gets.update(gets or {})
        self.verbose = verbose
        super().__init__((host, port), _Handler)

    def log_exception(self, name, exc):
        import traceback
        print(f"{time.strftime('%FT%T')} {name}: unhandled {exc!r}", flush=True)
        traceback.print_exc()


def serve_status(host, port, fn):
    """A second, GET-only server (electric-moray's status port) in a thread."""
    srv = RpcServer(host, port, object(), gets={"/status": fn})
    t = threading.Thread(target=srv.serve_forever, name=f"status-{port}", daemon=True)
    t.start()
    return srv


# ---- client -------------------------------------------------------------------

class Client:
    """A small moray / electric-moray client (thread-safe; one keep-alive
    connection per thread).

    Every method returns the decoded JSON result or raises `RpcError` with the
    server's error name. Transport failures raise `RpcError` named
    ``ConnectionError`` (status 0) so callers can count them alike.
    """

    def __init__(self, url, timeout=30.0):
        u = urlsplit(url if "://" in url else "http://" + url)
        self.url = f"http://{u.hostname}:{u.port}"
        self.host, self.port = u.hostname, u.port
        self.timeout = timeout
        self._local = threading.local()

    def __repr__(self):
        return f"Client({self.url})"

    def _conn(self):
        c = getattr(self._local, "conn", None)
        if c is not None and c.sock is not None:
            # A keep-alive connection the server has closed (e.g. it restarted)
            # reads as EOF: reconnect before sending rather than retry after.
            try:
                r, _, _ = select.select([c.sock], [], [], 0)
            except (OSError, ValueError):
                r = [c.sock]
            if r:
                c.close()
                c = None
        if c is None:
            c = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._local.conn = c
        return c

    def _drop(self):
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
        self._local.conn = None

    def close(self):
        self._drop()

    def _request(self, method, path, body=None):
        data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode() \
            if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        c = self._conn()
        sent = False
        try:
            c.request(method, path, body=data, headers=headers)
            sent = True
            resp = c.getresponse()
            raw = resp.read()
            status = resp.status
            if resp.getheader("Connection", "").lower() == "close":
                self._drop()
        except (OSError, http.client.HTTPException) as exc:
            self._drop()
            # info.sent: False means the server cannot have seen the request
            # (safe to retry elsewhere); True means it may have been applied.
            raise RpcError("ConnectionError", f"{self.url}{path}: {exc!r}", 0,
                           info={"sent": sent}) from None
        try:
            out = json.loads(raw) if raw else {}
        except ValueError:
            raise RpcError("InternalError", f"{self.url}{path}: non-JSON reply "
                           f"(HTTP {status}): {raw[:200]!r}", status) from None
        if status >= 300:
            raise RpcError.from_wire(out if isinstance(out, dict) else {}, status)
        return out

    # -- generic --
    def call(self, rpc, args):
        return self._request("POST", "/" + rpc, args)

    def ping(self):
        return self._request("GET", "/ping")

    def status(self):
        return self._request("GET", "/status")

    # -- objects --
    def put_object(self, bucket, key, value, etag=_MISSING, **options):
        """putObject. ``etag`` omitted: unconditional; None: must not exist;
        a string: must match the current `_etag`. Returns ``{"etag", ...}``."""
        if etag is not _MISSING:
            options["etag"] = etag
        return self.call("putObject", {"bucket": bucket, "key": key, "value": value,
                                       "options": options})

    def get_object(self, bucket, key, **options):
        return self.call("getObject", {"bucket": bucket, "key": key, "options": options})

    def del_object(self, bucket, key, etag=_MISSING, **options):
        if etag is not _MISSING:
            options["etag"] = etag
        return self.call("delObject", {"bucket": bucket, "key": key, "options": options})

    def find_objects(self, bucket, filter, **options):
        """findObjects; returns the list of records (``objects`` of the reply)."""
        return self.call("findObjects", {"bucket": bucket, "filter": filter,
                                         "options": options})["objects"]

    def batch(self, requests, **options):
        """batch: ``requests`` = [{"operation": "put"|"delete", "bucket", "key",
        "value", "options"}]; all in one transaction."""
        return self.call("batch", {"requests": requests, "options": options})

    def sql(self, statement, values=None, **options):
        return self.call("sql", {"statement": statement, "values": values or [],
                                 "options": options})["rows"]

    def get_tokens(self):
        return self.call("getTokens", {})["tokens"]


def wait_ping(url, timeout=20.0, proc_alive=None):
    """Wait until ``GET /ping`` answers; ``proc_alive()`` false aborts early."""
    c = Client(url, timeout=2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            c.ping()
            c.close()
            return True
        except RpcError:
            pass
        if proc_alive is not None and not proc_alive():
            return False
        time.sleep(0.05)
    c.close()
    return False


def log_tail(path, n=5):
    """The last lines of a log, for error messages."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - 4096))
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    return " | ".join(l.strip() for l in lines[-n:] if l.strip())
