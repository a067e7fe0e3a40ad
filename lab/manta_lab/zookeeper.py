"""The lab's ZooKeeper: one standalone ZooKeeper 3.8 server (the Debian jar).

Runs ``java ... org.apache.zookeeper.server.ZooKeeperServerMain <conf>`` with
its own configuration and data under ``<home>/zookeeper``. The only listener is
the client port ``cfg.port('zookeeper')`` on 127.0.0.1: no admin server, no
JMX port, no quorum/election ports (standalone). Data survives `lab down`.

    start(cfg)               start it (idempotent) and wait until it serves
    stop(cfg)                stop it by pid
    wait_ready(cfg, timeout) wait until `srvr` answers on the client port
    client(cfg)              a started KazooClient, as a context manager
"""
import os
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from . import procs
from .config import HOST, LabError

NAME = "zookeeper"
JAVA_DIR = Path("/usr/share/java")
# The Debian jar's manifest Class-Path names its dependencies but no slf4j
# binding; slf4j-simple sends the server's log to stderr (our log file).
JARS = ["zookeeper.jar", "zookeeper-jute.jar", "slf4j-api.jar", "slf4j-simple.jar"]
# tickTime bounds the session timeouts a client may negotiate:
# [2 * tick, 20 * tick] = [1 s, 10 s]. The lab's sitters ask for a few seconds
# (see sitter.SESSION_TIMEOUT), so a SIGKILLed sitter's ephemeral node expires
# quickly, as Manta's 60 s would, only faster.
TICK_MS = 500


def home(cfg):
    return cfg.path("zookeeper")


def conf_file(cfg):
    return home(cfg) / "zoo.cfg"


def _java():
    java = shutil.which("java") or "/usr/bin/java"
    if not os.path.exists(java):
        raise LabError(NAME, "java not found; run scripts/setup.sh (default-jre-headless)")
    return java


def _classpath():
    missing = [j for j in JARS if not (JAVA_DIR / j).exists()]
    if missing:
        raise LabError(NAME, f"missing {', '.join(missing)} in {JAVA_DIR}; "
                             "run scripts/setup.sh (Debian package zookeeper)")
    return ":".join(str(JAVA_DIR / j) for j in JARS)


def write_conf(cfg):
    d = home(cfg)
    (d / "data").mkdir(parents=True, exist_ok=True)
    text = "\n".join([
        "# written by manta_lab.zookeeper; regenerated at every start",
        f"tickTime={TICK_MS}",
        f"dataDir={d / 'data'}",
        f"clientPort={cfg.port('zookeeper')}",
        f"clientPortAddress={HOST}",
        "maxClientCnxns=0",              # every lab client comes from 127.0.0.1
        f"minSessionTimeout={2 * TICK_MS}",
        f"maxSessionTimeout={20 * TICK_MS}",
        "admin.enableServer=false",
        "4lw.commands.whitelist=srvr,ruok,stat,mntr,cons",
        "autopurge.snapRetainCount=3",
        "autopurge.purgeInterval=1",
        "",
    ])
    tmp = conf_file(cfg).with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, conf_file(cfg))
    return conf_file(cfg)


def argv(cfg):
    return [
        _java(),
        "-Xms32m", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
        "-Xshare:auto", "-XX:+DisableAttachMechanism",
        "-Djava.net.preferIPv4Stack=true",
        "-Dzookeeper.admin.enableServer=false",
        "-Dzookeeper.jmx.log4j.disable=true",
        "-Dorg.slf4j.simpleLogger.defaultLogLevel=info",
        "-Dorg.slf4j.simpleLogger.showDateTime=true",
        "-Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd'T'HH:mm:ss.SSSZ",
        "-cp", _classpath(),
        "org.apache.zookeeper.server.ZooKeeperServerMain",
        str(conf_file(cfg)),
    ]


def four_letter(cfg, word, timeout=1.0):
    """Send a four-letter word to the client port; the reply text or None."""
    try:
        with socket.create_connection((HOST, cfg.port("zookeeper")), timeout=timeout) as s:
            s.sendall(word.encode())
            chunks = []
            while True:
                b = s.recv(4096)
                if not b:
                    break
                chunks.append(b)
            return b"".join(chunks).decode(errors="replace")
    except OSError:
        return None


def serving(cfg):
    out = four_letter(cfg, "srvr")
    return bool(out) and out.startswith("Zookeeper version")


def start(cfg, timeout=30):
    """Start ZooKeeper if it is not running and wait until it serves."""
    log = cfg.log(NAME)
    if procs.alive(cfg, NAME):
        wait_ready(cfg, timeout)
        return
    if serving(cfg):
        raise LabError(NAME, f"something else already serves ZooKeeper on {cfg.zk_connect}", log)
    write_conf(cfg)
    procs.spawn(cfg, NAME, argv(cfg), log=log, cwd=str(home(cfg)))
    wait_ready(cfg, timeout)


def wait_ready(cfg, timeout=30):
    deadline = time.monotonic() + timeout
    log = cfg.log(NAME)
    while time.monotonic() < deadline:
        if serving(cfg):
            return True
        if not procs.alive(cfg, NAME):
            raise LabError(NAME, "exited during start-up", log)
        time.sleep(0.1)
    raise LabError(NAME, f"not serving on {cfg.zk_connect} after {timeout}s", log)


def stop(cfg):
    return procs.stop(cfg, NAME)


@contextmanager
def client(cfg, timeout=10.0):
    """A connected KazooClient for the lab's ZooKeeper, closed on exit."""
    from kazoo.client import KazooClient
    from kazoo.handlers.threading import KazooTimeoutError
    zk = KazooClient(hosts=cfg.zk_connect, timeout=timeout)
    try:
        zk.start(timeout=timeout)
    except KazooTimeoutError:
        zk.close()
        raise LabError(NAME, f"cannot connect to {cfg.zk_connect}", cfg.log(NAME)) from None
    try:
        yield zk
    finally:
        zk.stop()
        zk.close()
