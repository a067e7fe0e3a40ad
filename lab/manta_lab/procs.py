"""Start and stop lab processes by the pids we started, never by name.

Every lab process is started in its own session (so it leads a process group
that also holds its children, e.g. a sitter's postgres). Its pidfile
``<home>/run/<name>.pid`` records the pid and the kernel start time of that
pid; a stop verifies both before signalling, so a recycled pid is never hit.
"""
import json
import os
import signal
import subprocess
import time

from .config import LabError


def _starttime(pid):
    """Kernel start time (clock ticks since boot) of pid, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read().decode()
    except OSError:
        return None
    # comm may hold spaces/parens: fields after the last ')' are well-formed.
    rest = data[data.rindex(")") + 2:].split()
    if rest[0] == "Z":  # zombie: as good as dead
        return None
    return int(rest[19])


def _pgid_members(pgid, not_before):
    """Pids in process group pgid that started no earlier than not_before."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                data = fh.read().decode()
        except OSError:
            continue
        rest = data[data.rindex(")") + 2:].split()
        if int(rest[2]) == pgid and int(rest[19]) >= not_before and rest[0] != "Z":
            out.append(pid)
    return out


def pidfile(cfg, name):
    return cfg.run_dir / f"{name}.pid"


def read(cfg, name):
    try:
        return json.loads(pidfile(cfg, name).read_text())
    except (OSError, ValueError):
        return None


def alive(cfg, name):
    """The pid of the named process if it is the one we started and still runs."""
    rec = read(cfg, name)
    if not rec:
        return None
    if _starttime(rec["pid"]) == rec["start"]:
        return rec["pid"]
    return None


def spawn(cfg, name, argv, log=None, env=None, cwd=None, user=None):
    """Start argv detached in a new session; record and return its pid.

    Output goes to ``log`` (default: <home>/log/<name>.log). Refuses to start a
    second copy of a process that is still alive.
    """
    pid = alive(cfg, name)
    if pid:
        return pid
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    log = log or cfg.log(name)
    with open(log, "ab") as out:
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=env, cwd=cwd, start_new_session=True, close_fds=True, user=user)
        except OSError as exc:
            raise LabError(name, f"cannot start {argv[0]}: {exc}", log) from exc
    _children.append(proc)  # reaped by reap(): long-lived parents call it
    start = None
    for _ in range(50):
        start = _starttime(proc.pid)
        if start is not None:
            break
        time.sleep(0.01)
    rec = {"pid": proc.pid, "start": start, "argv": argv, "log": str(log)}
    tmp = pidfile(cfg, name).with_suffix(".tmp")
    tmp.write_text(json.dumps(rec))
    os.replace(tmp, pidfile(cfg, name))
    return proc.pid


_children = []


def reap():
    """Collect exited children of this process (avoids zombies in servers)."""
    for p in list(_children):
        if p.poll() is not None:
            _children.remove(p)


def _signal(pids, sig):
    for t in pids:
        try:
            os.kill(t, sig)
        except ProcessLookupError:
            pass


def stop(cfg, name, sig=signal.SIGTERM, timeout=15.0, group=True):
    """Stop the named process (and its process group) if it is ours.

    Sends ``sig``, waits up to ``timeout`` seconds, then SIGKILL. Returns True if
    something was stopped. Group members are only signalled when they started
    after our process did, so nothing foreign is touched.
    """
    rec = read(cfg, name)
    if not rec:
        return False
    pid, start = rec["pid"], rec["start"]
    targets = {}
    if start is not None:
        if _starttime(pid) == start:
            targets[pid] = start
        if group:
            for m in _pgid_members(pid, start):
                targets[m] = _starttime(m)
    stopped = bool(targets)
    _signal(targets, sig)
    deadline = time.monotonic() + timeout
    escalated = sig == signal.SIGKILL
    while True:
        reap()
        targets = {t: s for t, s in targets.items() if s is not None and _starttime(t) == s}
        if not targets:
            break
        if time.monotonic() > deadline:
            if escalated:
                raise LabError(name, f"pids {sorted(targets)} survive SIGKILL", rec.get("log"))
            _signal(targets, signal.SIGKILL)
            escalated = True
            deadline = time.monotonic() + 5
        time.sleep(0.05)
    try:
        pidfile(cfg, name).unlink()
    except FileNotFoundError:
        pass
    return stopped


def kill(cfg, name):
    """SIGKILL the process group at once (how SMF stops manatee-sitter)."""
    return stop(cfg, name, sig=signal.SIGKILL, timeout=5)


def names(cfg):
    if not cfg.run_dir.exists():
        return []
    return sorted(p.stem for p in cfg.run_dir.glob("*.pid"))
