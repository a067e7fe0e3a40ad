"""SIGKILL a process the test started and everything it started: a controller crash.

ansible-playbook forks a worker per task and the workers call setsid, so neither the process group nor a
single snapshot of the tree catches them all: a worker forked between the snapshot and the kill survives,
orphaned (seen: a held play left waiting forever after its test passed). So the tree is frozen first
(SIGSTOP, root downwards, until no new process appears), then killed. Only descendants of the pid the
test itself started are touched.
"""
import os
import signal
from pathlib import Path


def _children():
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
                kids.setdefault(int(stat[stat.rindex(")") + 2:].split()[1]), []).append(int(d))
            except (OSError, ValueError):
                pass
    return kids


def descendants(root):
    """``root`` and every process started (transitively) by it, from /proc."""
    kids = _children()
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def _signal(pid, sig):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def kill_tree(proc):
    """Freeze ``proc`` (a Popen) and its descendants, then SIGKILL them all and reap ``proc``.
    (Background workers that detached, reparented to init, are not descendants and live on.)"""
    if proc.poll() is not None:
        return
    frozen = set()
    while True:
        tree = [p for p in descendants(proc.pid) if p not in frozen]
        if not tree:
            break
        for p in tree:
            _signal(p, signal.SIGSTOP)   # a stopped process cannot fork another worker
            frozen.add(p)
    for p in frozen:
        _signal(p, signal.SIGKILL)
    proc.wait(timeout=30)
