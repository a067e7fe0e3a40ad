# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""A small HTTP/1.1 keep-alive client for the copy engine (standard library only).

Why not ``http.client``: a copy is a GET whose body goes straight into a large
preallocated buffer (``recv_into``, no intermediate ``bytes``), and a batch of
copies is checked with pipelined HEADs on one connection (one round trip for
the batch, not one per object). ``http.client`` parses every header block with
``email.parser`` and supports neither.

What it handles: ``Content-Length`` bodies, ``Transfer-Encoding: chunked``
(with trailers), bodies delimited by the connection's close, interim ``1xx``
responses, ``Connection: close`` / HTTP/1.0, HEAD and bodiless statuses
(204, 304), pipelining, and timeouts (every ``connect``/``send``/``recv``
waits at most ``timeout`` seconds). A peer that closes before the declared
length arrives raises :class:`IncompleteBody`; a malformed status line,
header block or chunk framing raises :class:`ProtocolError`. After any error
the connection is unusable and is closed; the caller opens a new one.
A reused keep-alive connection that the server had already closed (the
classic idle race) is re-opened and the request re-sent once, transparently:
GET and HEAD are idempotent.
"""
from __future__ import annotations

import socket
import ssl
from urllib.parse import urlsplit

MAX_HEAD = 64 * 1024          # status line + headers of one response, at most
_NO_BODY_STATUS = (204, 304)


class HTTPClientError(Exception):
    """The response could not be read (the connection is closed)."""


class ProtocolError(HTTPClientError):
    """Malformed response: status line, headers or chunked framing."""


class IncompleteBody(HTTPClientError):
    """The peer closed the connection before the end of the body."""


class ConnectionClosed(HTTPClientError):
    """The peer closed the connection before sending any byte of a response."""


class Response:
    """Status and headers of one response; the body is read with
    :meth:`Connection.readinto` (or skipped with :meth:`Connection.discard`)."""

    __slots__ = ("status", "reason", "headers", "length", "chunked", "will_close",
                 "remaining", "chunk_left", "done", "until_close")

    def __init__(self, status, reason, headers):
        self.status = status
        self.reason = reason
        self.headers = headers          # lower-case name -> value (last one wins; str)
        self.length = None              # Content-Length, when the body has one
        self.chunked = False
        self.will_close = False
        self.remaining = 0              # bytes of a Content-Length body still to read
        self.chunk_left = 0             # bytes of the current chunk still to read
        self.done = False               # the body has been read completely
        self.until_close = False        # the body ends when the connection closes

    def getheader(self, name, default=None):
        return self.headers.get(name.lower(), default)


class Connection:
    """One keep-alive connection to ``scheme://host:port``. Not thread-safe: one
    per thread (the copy engine keeps one per source and thread)."""

    def __init__(self, base_url, timeout=30.0, ssl_context=None, recv_size=MAX_HEAD):
        u = urlsplit(base_url)
        if u.scheme not in ("http", "https"):
            raise ValueError(f"unsupported URL scheme in {base_url!r} (expected http or https)")
        self.scheme = u.scheme
        self.host = u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.base_path = u.path.rstrip("/")
        self.timeout = timeout
        self.ssl_context = ssl_context
        self.sock = None
        self.buf = bytearray(max(MAX_HEAD, recv_size))
        self.view = memoryview(self.buf)
        self.pos = 0                    # unread bytes are buf[pos:end]
        self.end = 0
        self.requests = 0               # requests sent on the current socket
        hostport = self.host if self.port == (443 if u.scheme == "https" else 80) \
            else f"{self.host}:{self.port}"
        if ":" in self.host and not self.host.startswith("["):
            hostport = f"[{self.host}]" if self.port in (80, 443) else f"[{self.host}]:{self.port}"
        self.host_header = hostport

    # ---- socket -----------------------------------------------------------------------
    def connect(self):
        self.close()
        s = socket.create_connection((self.host, self.port), timeout=self.timeout)
        try:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.scheme == "https":
                ctx = self.ssl_context or ssl.create_default_context()
                s = ctx.wrap_socket(s, server_hostname=self.host)
        except BaseException:
            s.close()
            raise
        self.sock = s
        self.pos = self.end = 0
        self.requests = 0

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self.pos = self.end = 0

    @property
    def is_open(self):
        return self.sock is not None

    # ---- requests ---------------------------------------------------------------------
    def _request_bytes(self, method, path, headers=None):
        lines = [f"{method} {self.base_path}{path} HTTP/1.1", f"Host: {self.host_header}",
                 "Connection: keep-alive"]
        if headers:
            lines.extend(f"{k}: {v}" for k, v in headers.items())
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def send(self, requests):
        """Send ``[(method, path)]`` (pipelined: one write) on the current connection,
        opening one if needed. ``path`` is appended to the base URL's path."""
        if self.sock is None:
            self.connect()
        data = b"".join(self._request_bytes(m, p) for m, p in requests)
        try:
            self.sock.sendall(data)
        except BaseException:
            self.close()
            raise
        self.requests += len(requests)

    def request(self, method, path):
        """Send one request and read its status and headers; a reused connection the
        server had closed meanwhile is re-opened and the request re-sent once."""
        for attempt in (0, 1):
            reused = self.sock is not None and self.requests > 0
            try:
                self.send([(method, path)])
                return self.response(method)
            except (ConnectionClosed, ConnectionResetError, BrokenPipeError):
                self.close()
                if attempt or not reused:
                    raise
        raise AssertionError("unreachable")

    # ---- reading ----------------------------------------------------------------------
    def _fill(self):
        """Read more bytes into the buffer; returns how many (0 = closed)."""
        if self.pos == self.end:
            self.pos = self.end = 0
        elif self.end == len(self.buf):
            if self.pos == 0:
                raise ProtocolError(f"response head or chunk line longer than {len(self.buf)} bytes")
            n = self.end - self.pos
            self.buf[:n] = self.buf[self.pos:self.end]
            self.pos, self.end = 0, n
        k = self.sock.recv_into(self.view[self.end:])
        self.end += k
        return k

    def _line(self, limit=MAX_HEAD):
        """One CRLF-terminated line from the buffer (without the CRLF)."""
        while True:
            i = self.buf.find(b"\n", self.pos, self.end)
            if i >= 0:
                line = bytes(self.buf[self.pos:i])
                self.pos = i + 1
                return line[:-1] if line.endswith(b"\r") else line
            if self.end - self.pos > limit:
                raise ProtocolError("line too long")
            if not self._fill():
                return None

    def response(self, method="GET"):
        """Read the next response's status line and headers (skipping interim 1xx)."""
        if self.sock is None:
            raise ConnectionClosed("not connected")
        try:
            while True:
                resp = self._head(method)
                if 100 <= resp.status < 200 and resp.status != 101:
                    continue
                return resp
        except BaseException:
            self.close()
            raise

    def _head(self, method):
        first = True
        while True:
            start = self._line()
            if start is None:
                if first and self.pos == self.end:
                    raise ConnectionClosed("connection closed before the response")
                raise IncompleteBody("connection closed inside the response head")
            if start or not first:
                break
            first = False            # tolerate one empty line before a status line
        parts = start.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit() \
                or len(parts[1]) != 3:
            raise ProtocolError(f"bad status line {start[:100]!r}")
        version, status = parts[0], int(parts[1])
        reason = parts[2].decode("latin-1", "replace") if len(parts) > 2 else ""
        headers = {}
        lengths = set()
        size = len(start)
        while True:
            line = self._line()
            if line is None:
                raise IncompleteBody("connection closed inside the response head")
            if not line:
                break
            size += len(line)
            if size > MAX_HEAD:
                raise ProtocolError("response head too large")
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                raise ProtocolError(f"bad header line {line[:100]!r}")
            name = name.decode("latin-1").lower()
            value = value.strip().decode("latin-1")
            if name == "content-length":
                lengths.update(v.strip() for v in value.split(","))
            if name in headers and name in ("transfer-encoding", "connection"):
                headers[name] += ", " + value
            else:
                headers[name] = value
        r = Response(status, reason, headers)
        conn_tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        r.will_close = "close" in conn_tokens or (version == b"HTTP/1.0" and "keep-alive" not in conn_tokens)
        te = [t.strip().lower() for t in headers.get("transfer-encoding", "").split(",") if t.strip()]
        if method == "HEAD" or status in _NO_BODY_STATUS or 100 <= status < 200:
            r.done = True
            if lengths:
                r.length = self._length(lengths)
            return r
        if te:
            if te[-1] != "chunked":
                raise ProtocolError(f"unsupported Transfer-Encoding {headers['transfer-encoding']!r}")
            r.chunked = True
            return r
        if lengths:
            r.length = r.remaining = self._length(lengths)
            r.done = r.remaining == 0
            return r
        r.until_close = True
        r.will_close = True
        return r

    @staticmethod
    def _length(values):
        if len(values) != 1:
            raise ProtocolError(f"conflicting Content-Length {sorted(values)}")
        v = next(iter(values))
        if not v.isdigit():
            raise ProtocolError(f"bad Content-Length {v!r}")
        return int(v)

    def readinto(self, resp, mv):
        """Fill ``mv`` (a writable memoryview) with body bytes; returns how many, fewer
        only at the end of the body, 0 when the body is complete. Raises
        :class:`IncompleteBody` (or ``OSError``, e.g. a timeout) on a broken transfer."""
        if resp.done:
            if resp.will_close:
                self.close()
            return 0
        try:
            if resp.chunked:
                n = self._readinto_chunked(resp, mv)
            else:
                n = self._readinto_plain(resp, mv)
        except BaseException:
            self.close()
            raise
        if resp.done and resp.will_close:
            self.close()
        return n

    def _readinto_plain(self, resp, mv):
        want = len(mv)
        if not resp.until_close:
            want = min(want, resp.remaining)
        got = 0
        buffered = self.end - self.pos
        if buffered and want:
            k = min(buffered, want)
            mv[:k] = self.view[self.pos:self.pos + k]
            self.pos += k
            got = k
        sock = self.sock
        while got < want:
            k = sock.recv_into(mv[got:want])
            if not k:
                if resp.until_close:
                    resp.done = True
                    break
                resp.remaining -= got
                raise IncompleteBody(f"connection closed with {resp.remaining} of "
                                     f"{resp.length} body bytes unread")
            got += k
        if not resp.until_close:
            resp.remaining -= got
            if resp.remaining == 0:
                resp.done = True
        return got

    def _readinto_chunked(self, resp, mv):
        got = 0
        want = len(mv)
        while got < want and not resp.done:
            if resp.chunk_left == 0:
                line = self._line(4096)
                if line is None:
                    raise IncompleteBody("connection closed inside chunked framing")
                size = line.split(b";", 1)[0].strip()
                try:
                    n = int(size, 16)
                except ValueError:
                    raise ProtocolError(f"bad chunk size line {line[:100]!r}") from None
                if n < 0 or not size:
                    raise ProtocolError(f"bad chunk size line {line[:100]!r}")
                if n == 0:
                    while True:                     # trailers, up to the empty line
                        t = self._line()
                        if t is None:
                            raise IncompleteBody("connection closed inside chunked trailers")
                        if not t:
                            break
                    resp.done = True
                    break
                resp.chunk_left = n
            k = min(resp.chunk_left, want - got)
            buffered = self.end - self.pos
            if buffered:
                k = min(k, buffered)
                mv[got:got + k] = self.view[self.pos:self.pos + k]
                self.pos += k
            else:
                k = self.sock.recv_into(mv[got:got + k])
                if not k:
                    raise IncompleteBody("connection closed inside a chunk")
            got += k
            resp.chunk_left -= k
            if resp.chunk_left == 0:
                crlf = self._line(2)
                if crlf is None:
                    raise IncompleteBody("connection closed after a chunk")
                if crlf:
                    raise ProtocolError("chunk not followed by CRLF")
        return got

    def discard(self, resp, limit=64 * 1024):
        """Skip the rest of a body (error pages). Bodies larger than ``limit``, or of
        unknown length, close the connection instead of being read."""
        if resp.done:
            if resp.will_close:
                self.close()
            return
        if resp.until_close or (not resp.chunked and resp.remaining > limit):
            self.close()
            return
        scratch = memoryview(bytearray(min(limit, 16384)))
        total = 0
        while not resp.done:
            k = self.readinto(resp, scratch)
            total += k
            if total > limit and not resp.done:
                self.close()
                return

    def head_many(self, paths, attempts=2, depth=64):
        """Pipelined ``HEAD`` of every path (``depth`` requests per write); returns, in
        order, a :class:`Response` or the exception that kept a path unanswered. When the
        server closes the connection part-way (``Connection: close`` after its keep-alive
        request limit, or a reset), the unanswered rest is sent again on a new
        connection; ``attempts`` consecutive tries without any answer give up."""
        out = [None] * len(paths)
        todo = list(range(len(paths)))
        fails = 0
        while todo:
            window = todo[:depth]
            answered = 0
            try:
                self.send([("HEAD", paths[i]) for i in window])
                for i in window:
                    r = self.response("HEAD")
                    out[i] = r
                    answered += 1
                    if r.will_close:
                        self.close()
                        break
            except (OSError, HTTPClientError) as exc:
                self.close()
                if answered == 0:
                    fails += 1
                    if fails >= attempts:
                        for i in todo:
                            out[i] = exc
                        return out
            if answered:
                fails = 0
            todo = todo[answered:]
        return out
