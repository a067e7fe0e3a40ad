# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""ZooKeeper access for manta.ops: kazoo with a timeout on every call.

* ``zk_argument_spec()`` is the shared option block (doc fragment
  ``manta.ops.zookeeper``): ``zk_servers`` (env ``MANTA_ZK_SERVERS``) and
  ``zk_timeout``.
* ``Zk`` is a connected session. Every operation goes through kazoo's async
  API and waits at most ``timeout`` seconds in total, so an unreachable or
  hung ZooKeeper gives a ``ZkError`` naming the servers, the operation and
  the path instead of a hang.
* Within that time, transient failures (connection loss, operation timeout,
  an expired session being replaced) are retried with backoff. Reads are
  simply re-sent. A write whose reply was lost may have been applied: it is
  re-read first (create: the node holds our data; compare-and-swap set: our
  data at version + 1; delete: the node is gone; a transaction: one witness
  operation, see ``Zk._tx_applied``) and reported done rather than re-sent,
  so a write is never applied twice nor reported lost when it was not.

kazoo is optional at import time (the ``import`` sanity test runs without
it); modules call ``require_kazoo(module)`` first.
"""
from __future__ import annotations

import logging
import re
import time
import traceback

from ansible.module_utils.basic import env_fallback, missing_required_lib

KAZOO_IMP_ERR = None
try:
    from kazoo.client import KazooClient
    from kazoo.exceptions import (BadVersionError, ConnectionClosedError, ConnectionDropped,
                                  ConnectionLoss, KazooException, NodeExistsError, NoNodeError,
                                  NotEmptyError, OperationTimeoutError, RolledBackError,
                                  SessionExpiredError)
    from kazoo.handlers.threading import KazooTimeoutError
    HAS_KAZOO = True
except ImportError:  # pragma: no cover - exercised by the sanity import test
    KAZOO_IMP_ERR = traceback.format_exc()
    HAS_KAZOO = False
    KazooClient = None

    class KazooException(Exception):
        pass

    class NoNodeError(KazooException):
        pass

    class NodeExistsError(KazooException):
        pass

    class BadVersionError(KazooException):
        pass

    class NotEmptyError(KazooException):
        pass

    class RolledBackError(KazooException):
        pass

    class ConnectionLoss(KazooException):
        pass

    class ConnectionDropped(KazooException):
        pass

    class OperationTimeoutError(KazooException):
        pass

    class SessionExpiredError(KazooException):
        pass

    class ConnectionClosedError(SessionExpiredError):
        pass

    class KazooTimeoutError(Exception):
        pass

ENV_SERVERS = "MANTA_ZK_SERVERS"
DEFAULT_TIMEOUT = 10.0
RETRY_DELAY = 0.1       # first backoff after a transient failure (s), doubled per attempt
RETRY_MAX_DELAY = 1.0   # longest backoff (s); every call still ends within its timeout

# host[:port], comma separated, optionally followed by one chroot path.
_SERVER_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(:\d{1,5})?$")


class ZkError(Exception):
    """ZooKeeper could not be reached or did not answer in time."""


def zk_argument_spec():
    """The shared ZooKeeper options (documented by the ``manta.ops.zookeeper`` fragment)."""
    return dict(
        zk_servers=dict(type="str", fallback=(env_fallback, [ENV_SERVERS])),
        zk_timeout=dict(type="float", default=DEFAULT_TIMEOUT),
    )


def require_kazoo(module):
    if not HAS_KAZOO:
        module.fail_json(msg=missing_required_lib("kazoo >= 2.8"), exception=KAZOO_IMP_ERR)


def check_servers(servers):
    """Validate a connect string; return it stripped. Raises ZkError saying what is valid."""
    if not servers or not str(servers).strip():
        raise ZkError(
            "no ZooKeeper servers given: set the zk_servers option or the "
            f"{ENV_SERVERS} environment variable to a connect string like "
            "\"10.0.0.1:2181,10.0.0.2:2181\"")
    servers = str(servers).strip()
    hosts = servers
    if "/" in servers:
        hosts, chroot = servers.split("/", 1)
        if not chroot:
            raise ZkError(f"zk_servers {servers!r}: empty chroot after \"/\"")
    for part in hosts.split(","):
        part = part.strip()
        m = _SERVER_RE.match(part)
        if not m:
            raise ZkError(
                f"zk_servers {servers!r}: {part!r} is not host or host:port; expected a "
                "connect string like \"10.0.0.1:2181,10.0.0.2:2181\"")
        if m.group(2) and not 0 < int(m.group(2)[1:]) < 65536:
            raise ZkError(f"zk_servers {servers!r}: port of {part!r} is outside 1..65535")
    return servers


def _quiet_kazoo():
    # kazoo logs every failed connection attempt; the module reports the outcome itself.
    for name in ("kazoo", "kazoo.client", "kazoo.protocol.connection"):
        lg = logging.getLogger(name)
        if not any(isinstance(h, logging.NullHandler) for h in lg.handlers):
            lg.addHandler(logging.NullHandler())
        lg.propagate = False


class Zk:
    """A connected ZooKeeper session with bounded waits.

    Use as a context manager; ``close()`` is idempotent::

        with Zk(servers, timeout=10) as zk:
            data, stat = zk.get("/manatee/1.moray/state")
    """

    def __init__(self, servers, timeout=DEFAULT_TIMEOUT):
        if not HAS_KAZOO:
            raise ZkError(missing_required_lib("kazoo >= 2.8"))
        self.servers = check_servers(servers)
        try:
            self.timeout = float(timeout)
        except (TypeError, ValueError):
            raise ZkError(f"zk_timeout must be a number of seconds, found {timeout!r}") from None
        if self.timeout <= 0:
            raise ZkError(f"zk_timeout must be > 0 seconds, found {timeout!r}")
        self.retries = 0     # attempts re-sent after a transient failure
        self.recovered = 0   # writes whose reply was lost, found applied by re-reading
        self.client = None
        _quiet_kazoo()
        # Session timeout: long enough to survive a brief server hiccup, short
        # enough that an abandoned session (a killed module) expires quickly.
        self.client = KazooClient(hosts=self.servers, timeout=max(self.timeout, 4.0),
                                  connection_retry=dict(max_tries=-1, delay=0.2, max_delay=1.0))
        try:
            self.client.start(timeout=self.timeout)
        except KazooTimeoutError:
            self._discard()
            raise ZkError(
                f"cannot connect to ZooKeeper at {self.servers} within {self.timeout:g}s "
                "(expected a reachable ZooKeeper ensemble; check zk_servers / "
                f"{ENV_SERVERS} and that the servers are up)") from None
        except Exception as exc:
            self._discard()
            raise ZkError(f"cannot connect to ZooKeeper at {self.servers}: {exc}") from exc

    # ---- lifecycle -----------------------------------------------------------
    def _discard(self):
        try:
            self.client.stop()
        except Exception:
            pass
        try:
            self.client.close()
        except Exception:
            pass

    def close(self):
        if self.client is not None:
            self._discard()
            self.client = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # ---- bounded, retried calls ------------------------------------------------
    #
    # Every call below waits at most ``timeout`` seconds in total, retries
    # included. A transient failure (the connection dropped, an operation
    # timeout, a session that expired and is being replaced) is retried with
    # backoff; kazoo reconnects by itself. A write whose reply was lost may
    # have been applied by the server: before re-sending it, ``in_doubt``
    # re-reads and decides. A write found applied is reported as done (never
    # re-sent, so never applied twice); one found not applied is re-sent.

    def _get_result(self, async_result, remaining):
        return async_result.get(timeout=max(remaining, 0.001))

    def _call(self, what, send, in_doubt=None, deadline=None):
        """Run ``send()`` (returns a kazoo async result) until it answers.

        ``in_doubt(deadline)``, for writes, is called after an attempt was lost
        in flight: it returns ``(True, value)`` when re-reading shows that
        attempt was applied (``value`` is then the call's result) and
        ``(False, None)`` when it was not, so it is safe to send again.

        ``deadline`` (monotonic) lets a compound call share one time budget.
        """
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        attempts = 0
        last = None
        lost = False
        while True:
            attempts += 1
            try:
                if lost and in_doubt is not None:
                    applied, value = in_doubt(deadline)
                    if applied:
                        self.recovered += 1
                        return value
                try:
                    return self._get_result(send(), deadline - time.monotonic())
                except (NodeExistsError, BadVersionError, NoNodeError):
                    # A re-sent write meeting a conflict may be meeting its own
                    # first attempt, applied after all: look once more.
                    if lost and in_doubt is not None:
                        applied, value = in_doubt(deadline)
                        if applied:
                            self.recovered += 1
                            return value
                    raise
            except KazooTimeoutError:
                raise ZkError(self._gave_up(what, attempts, last)) from None
            except (NoNodeError, NodeExistsError, BadVersionError, NotEmptyError):
                raise
            except KazooException as exc:
                if not is_transient(exc):
                    raise ZkError(f"ZooKeeper at {self.servers}: {what} failed: "
                                  f"{type(exc).__name__} {exc}".rstrip()) from exc
                last = exc
                lost = True
                self.retries += 1
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ZkError(self._gave_up(what, attempts, last)) from None
                time.sleep(min(RETRY_DELAY * 2 ** min(attempts - 1, 6), RETRY_MAX_DELAY, remaining))

    def _gave_up(self, what, attempts, last):
        msg = f"ZooKeeper at {self.servers} did not answer {what} within {self.timeout:g}s"
        if last is not None:
            msg += (f" ({attempts} attempt{'s' if attempts != 1 else ''}; last error: "
                    f"{type(last).__name__}; check that the servers are up and reachable)")
        return msg

    # raw reads with the caller's deadline, for in_doubt checks
    def _peek(self, path, deadline):
        try:
            return self._get_result(self.client.get_async(path), deadline - time.monotonic())
        except NoNodeError:
            return None, None

    def get(self, path, watch=None):
        """(bytes, ZnodeStat); raises NoNodeError."""
        return self._call(f"get {path}", lambda: self.client.get_async(path, watch=watch))

    def get_or_none(self, path):
        """(bytes, stat) or (None, None) when the node does not exist."""
        try:
            return self.get(path)
        except NoNodeError:
            return None, None

    def exists(self, path, watch=None):
        return self._call(f"exists {path}", lambda: self.client.exists_async(path, watch=watch))

    def children(self, path, watch=None):
        """Child names; [] when the node does not exist."""
        try:
            return self._call(f"get_children {path}",
                              lambda: self.client.get_children_async(path, watch=watch))
        except NoNodeError:
            return []

    def create(self, path, value=b"", sequence=False, makepath=False):
        """Create ``path``; returns its name. A create whose reply was lost counts as done
        when the node exists holding exactly ``value`` (a sequential one: when a new
        sibling with that prefix and data appeared)."""
        deadline = time.monotonic() + self.timeout
        before = self._seq_siblings(path, deadline) if sequence else None

        def in_doubt(dl):
            if sequence:
                return self._seq_created(path, value, before, dl)
            return self._created(path, value, dl)
        return self._call(f"create {path}",
                          lambda: self.client.create_async(path, value, sequence=sequence,
                                                           makepath=makepath),
                          in_doubt, deadline)

    def set(self, path, value, version=-1):
        """Set data, compare-and-swap when ``version`` >= 0. A set whose reply was lost counts
        as done when the node holds ``value`` at ``version + 1`` (any version when -1)."""
        return self._call(f"set {path}",
                          lambda: self.client.set_async(path, value, version=version),
                          lambda dl: self._was_set(path, value, version, dl))

    def delete(self, path, version=-1):
        """Delete; a delete whose reply was lost counts as done when the node is gone."""
        return self._call(f"delete {path}",
                          lambda: self.client.delete_async(path, version=version),
                          lambda dl: self._deleted(path, dl))

    def ensure_path(self, path):
        """Create ``path`` and missing parents (empty data); True if anything was created."""
        if self.exists(path):
            return False
        try:
            self.create(path, b"", makepath=True)
        except NodeExistsError:
            return False
        return True

    def transaction(self):
        return self.client.transaction()

    def commit(self, tx, what):
        """Commit a transaction. Returns the per-op results; raises the first real error.

        ZooKeeper reports the failing operation's error and RolledBackError for
        the others; the failing one is re-raised so callers can catch
        BadVersionError / NodeExistsError / NoNodeError as for single calls.

        A commit whose reply was lost is re-sent only when re-reading shows it
        was not applied (a transaction is atomic: one witness operation tells;
        see ``_tx_applied``).
        """
        deadline = time.monotonic() + self.timeout
        ops = list(tx.operations)
        seq_before = {i: self._seq_siblings(self._unchroot(op.path), deadline)
                      for i, op in enumerate(ops) if _is_seq_create(op)}

        def send():
            fresh = tx if not tx.committed else self.client.transaction()
            fresh.operations = list(ops)
            return fresh.commit_async()

        results = self._call(what, send, lambda dl: self._tx_applied(ops, seq_before, dl), deadline)
        errors = [r for r in results if isinstance(r, Exception)]
        real = [e for e in errors if not isinstance(e, RolledBackError)]
        if real:
            raise real[0]
        if errors:
            raise ZkError(f"{what}: transaction rolled back without a reason")
        return results

    # ---- was a lost write applied? ----------------------------------------------
    def _unchroot(self, path):
        chroot = self.client.chroot or ""
        if chroot and path.startswith(chroot):
            return path[len(chroot):] or "/"
        return path

    def _created(self, path, value, deadline):
        data, stat = self._peek(path, deadline)
        return (True, path) if stat is not None and data == value else (False, None)

    def _was_set(self, path, value, version, deadline):
        data, stat = self._peek(path, deadline)
        if stat is None or data != value:
            return False, None
        if version == -1 or stat.version == version + 1:
            return True, stat
        return False, None

    def _deleted(self, path, deadline):
        exists = self._get_result(self.client.exists_async(path), deadline - time.monotonic())
        return (True, True) if exists is None else (False, None)

    def _seq_siblings(self, path, deadline):
        """Names already under the parent with the prefix of sequential ``path``."""
        parent, prefix = path.rsplit("/", 1)
        try:
            names = self._call(f"get_children {parent or '/'}",
                               lambda: self.client.get_children_async(parent or "/"),
                               deadline=deadline)
        except NoNodeError:
            names = []
        return {c for c in names if c.startswith(prefix)}

    def _seq_created(self, path, value, before, deadline):
        parent, prefix = path.rsplit("/", 1)
        try:
            now = self._get_result(self.client.get_children_async(parent or "/"),
                                   deadline - time.monotonic())
        except NoNodeError:
            return False, None
        for name in sorted((c for c in now if c.startswith(prefix) and c not in before),
                           reverse=True):
            data, _stat = self._peek(f"{parent}/{name}", deadline)
            if data == value:
                return True, f"{parent}/{name}"
        return False, None

    def _tx_applied(self, ops, seq_before, deadline):
        """Whether a transaction whose reply was lost was applied, and its results if so.

        Atomicity means one operation that tells is enough. Best witness first: a
        sequential create (a new sibling with our data), a create (the node with our
        data), a compare-and-swap set (our data at version + 1). A transaction of
        deletes and checks alone is judged by its first delete (the node is gone).
        """
        witness = None
        for rank in (_is_seq_create, _is_create, _is_cas_set, _is_delete):
            witness = next((i for i, op in enumerate(ops) if rank(op)), None)
            if witness is not None:
                break
        if witness is None:
            return False, None  # checks only: re-sending changes nothing
        op = ops[witness]
        path = self._unchroot(op.path)
        if _is_seq_create(op):
            applied = self._seq_created(path, op.data, seq_before[witness], deadline)[0]
        elif _is_create(op):
            applied = self._created(path, op.data, deadline)[0]
        elif _is_cas_set(op):
            applied = self._was_set(path, op.data, op.version, deadline)[0]
        else:
            applied = self._deleted(path, deadline)[0]
        if not applied:
            return False, None
        results = []
        for i, op in enumerate(ops):
            p = self._unchroot(op.path)
            if _is_seq_create(op):
                results.append(self._seq_created(p, op.data, seq_before[i], deadline)[1])
            elif _is_create(op):
                results.append(p)
            elif type(op).__name__ == "SetData":
                results.append(self._peek(p, deadline)[1])
            else:
                results.append(True)
        return True, results


def _is_seq_create(op):
    return type(op).__name__ in ("Create", "Create2") and bool(op.flags & 2)


def _is_create(op):
    return type(op).__name__ in ("Create", "Create2") and not op.flags & 2


def _is_cas_set(op):
    return type(op).__name__ == "SetData" and op.version >= 0


def _is_delete(op):
    return type(op).__name__ == "Delete"


def is_transient(exc):
    """A failure worth retrying: the connection or session went away, not the request."""
    if isinstance(exc, ConnectionClosedError):  # our own client was closed: final
        return False
    return isinstance(exc, (ConnectionLoss, ConnectionDropped, OperationTimeoutError,
                            SessionExpiredError))
