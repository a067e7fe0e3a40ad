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
    "ServiceUnavailableError": 503,
}

# The reply of a server that is shutting down (SIGTERM) to a request it read but
# did not process: the client may send it elsewhere (``info.applied`` is false).
NOT_APPLIED = "ServiceUnavailableError"

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
        if self.server.draining:
            # shutting down: no further request on this connection
            self.close_connection = True
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    # In-flight accounting for a graceful stop: a request counts from the moment its
    # request line has been read until its reply has been written.
    def handle_one_request(self):
        self._counted = False
        try:
            super().handle_one_request()
        finally:
            if self._counted:
                self.server.leave()

    def parse_request(self):
        self.server.enter()
        self._counted = True
        return super().parse_request()

    def _refuse_if_draining(self):
        if not self.server.draining:
            return False
        self._send(503, error(NOT_APPLIED, f"{self.server.name} is shutting down; request not processed",
                              info={"applied": False}).to_wire())
        return True

    def do_GET(self):
        if self._refuse_if_draining():
            return
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
        if self.server.draining:
            # read the body all the same: closing a socket with unread data resets the
            # connection, and the client could lose the reply that tells it to go elsewhere
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
            except (ValueError, OSError):
                pass
            self._refuse_if_draining()
            return
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

    def __init__(self, host, port, handler, gets=None, verbose=False, name=None):
        self.rpc_handler = handler
        self.gets = {"/ping": lambda: {"ok": True}}
        self.gets.update(gets or {})
        self.verbose = verbose
        self.name = name or f"{host}:{port}"
        self.draining = False
        self._inflight = 0
        self._conns = set()
        self._cv = threading.Condition()
        super().__init__((host, port), _Handler)

    def process_request_thread(self, request, client_address):
        with self._cv:
            self._conns.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._cv:
                self._conns.discard(request)

    def enter(self):
        with self._cv:
            self._inflight += 1

    def leave(self):
        with self._cv:
            self._inflight -= 1
            self._cv.notify_all()

    def stop_listening(self):
        """Stop taking connections: the accept loop ends (serve_forever must run with a short
        poll_interval), connections the kernel had already queued are accepted and answered
        (NOT_APPLIED, since we are draining), then the listening socket is closed, so that a
        client's connect is refused at once and it goes to another server."""
        with self._cv:
            self.draining = True
        self.shutdown()
        try:
            self.socket.setblocking(False)
            while True:
                try:
                    req, addr = self.socket.accept()
                except OSError:
                    break
                req.setblocking(True)
                self.process_request(req, addr)
        finally:
            self.socket.close()

    def drain(self, timeout=10.0):
        """Graceful stop: stop listening, then wait (at most ``timeout`` s) until every request
        read so far has been answered. Requests read from here on get NOT_APPLIED."""
        self.stop_listening()
        import socket
        with self._cv:
            ok = self._cv.wait_for(lambda: self._inflight <= 0, timeout)
            # Nothing in flight: end every kept-alive connection now, under the lock (no request can start
            # meanwhile), rather than when the process exits, so that the instant at which a client's request
            # could cross our close (and get no answer) is as short as it can be.
            for c in list(self._conns):
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        return ok

    def log_exception(self, name, exc):
        import traceback
        print(f"{time.strftime('%FT%T')} {name}: unhandled {exc!r}", flush=True)
        traceback.print_exc()


POLL = 0.05     # accept-loop poll: how long a stop waits for serve_forever to notice


def serve_status(host, port, fn):
    """A second, GET-only server (electric-moray's status port) in a thread."""
    srv = RpcServer(host, port, object(), gets={"/status": fn}, name=f"status {host}:{port}")
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": POLL}, name=f"status-{port}",
                         daemon=True)
    t.start()
    return srv


class GracefulStop:
    """Stop a server on a signal, gracefully and fast. Created early (its signal handlers are installed at
    once, so a signal that arrives while the process is still starting is not lost), then ``run(srv)``
    serves until one of ``signals`` arrives: every server (``srv`` and ``others``, e.g. a status server)
    stops listening at once (a client's connect is refused, which sends it to another process, as haproxy
    does), in-flight requests are answered, requests read after that are answered NOT_APPLIED, and
    ``run`` returns the signal number."""

    def __init__(self, signals=None):
        import signal
        self.signals = tuple(signals or (signal.SIGTERM,))
        self.fired = None
        self.lock = threading.Lock()
        self.srv = None
        self.others = ()
        self.on_stop = None
        self.drain_timeout = 10.0
        self.done = threading.Event()
        for sig in self.signals:
            signal.signal(sig, self._handler)

    def _handler(self, signum, _frame):
        with self.lock:
            if self.fired is not None:
                return
            self.fired = signum
            start = self.srv is not None
        if start:
            threading.Thread(target=self._stop, daemon=True, name="drain").start()

    def _stop(self):
        try:
            if self.on_stop is not None:
                self.on_stop(self.fired)
            ts = [threading.Thread(target=o.stop_listening, daemon=True) for o in self.others]
            for t in ts:
                t.start()
            self.srv.drain(self.drain_timeout)
            for t in ts:
                t.join(2.0)
        finally:
            self.done.set()

    def run(self, srv, others=(), drain_timeout=10.0, on_stop=None):
        self.others, self.drain_timeout, self.on_stop = tuple(others), drain_timeout, on_stop
        with self.lock:
            self.srv = srv
            early = self.fired is not None
        if early:
            threading.Thread(target=self._stop, daemon=True, name="drain").start()
        srv.serve_forever(poll_interval=POLL)
        self.done.wait(drain_timeout + 5.0)
        return self.fired


def serve_until_term(srv, others=(), drain_timeout=10.0, on_stop=None):
    """``GracefulStop().run(srv, ...)`` for SIGTERM: serve until it, then stop gracefully (see there)."""
    return GracefulStop().run(srv, others, drain_timeout, on_stop)


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
