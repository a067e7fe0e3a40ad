# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""ZooKeeper access for manta.ops: kazoo with a timeout on every call.

* ``zk_argument_spec()`` is the shared option block (doc fragment
  ``manta.ops.zookeeper``): ``zk_servers`` (env ``MANTA_ZK_SERVERS``) and
  ``zk_timeout``.
* ``Zk`` is a connected session. Every operation goes through kazoo's async
  API and waits at most ``timeout`` seconds, so an unreachable or hung
  ZooKeeper gives a ``ZkError`` naming the servers, the operation and the
  path instead of a hang.

kazoo is optional at import time (the ``import`` sanity test runs without
it); modules call ``require_kazoo(module)`` first.
"""
from __future__ import annotations

import logging
import re
import traceback

from ansible.module_utils.basic import env_fallback, missing_required_lib

KAZOO_IMP_ERR = None
try:
    from kazoo.client import KazooClient
    from kazoo.exceptions import (BadVersionError, KazooException, NodeExistsError, NoNodeError,
                                  NotEmptyError, RolledBackError)
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

    class KazooTimeoutError(Exception):
        pass

ENV_SERVERS = "MANTA_ZK_SERVERS"
DEFAULT_TIMEOUT = 10.0

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

    # ---- bounded calls -------------------------------------------------------
    def _wait(self, async_result, what):
        try:
            return async_result.get(timeout=self.timeout)
        except KazooTimeoutError:
            raise ZkError(f"ZooKeeper at {self.servers} did not answer {what} within "
                          f"{self.timeout:g}s") from None
        except (NoNodeError, NodeExistsError, BadVersionError, NotEmptyError):
            raise
        except KazooException as exc:
            raise ZkError(f"ZooKeeper at {self.servers}: {what} failed: "
                          f"{type(exc).__name__} {exc}".rstrip()) from exc

    def get(self, path, watch=None):
        """(bytes, ZnodeStat); raises NoNodeError."""
        return self._wait(self.client.get_async(path, watch=watch), f"get {path}")

    def get_or_none(self, path):
        """(bytes, stat) or (None, None) when the node does not exist."""
        try:
            return self.get(path)
        except NoNodeError:
            return None, None

    def exists(self, path, watch=None):
        return self._wait(self.client.exists_async(path, watch=watch), f"exists {path}")

    def children(self, path, watch=None):
        """Child names; [] when the node does not exist."""
        try:
            return self._wait(self.client.get_children_async(path, watch=watch),
                              f"get_children {path}")
        except NoNodeError:
            return []

    def create(self, path, value=b"", sequence=False, makepath=False):
        return self._wait(self.client.create_async(path, value, sequence=sequence,
                                                   makepath=makepath), f"create {path}")

    def set(self, path, value, version=-1):
        return self._wait(self.client.set_async(path, value, version=version), f"set {path}")

    def delete(self, path, version=-1):
        return self._wait(self.client.delete_async(path, version=version), f"delete {path}")

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
        """
        results = self._wait(tx.commit_async(), what)
        errors = [r for r in results if isinstance(r, Exception)]
        real = [e for e in errors if not isinstance(e, RolledBackError)]
        if real:
            raise real[0]
        if errors:
            raise ZkError(f"{what}: transaction rolled back without a reason")
        return results
