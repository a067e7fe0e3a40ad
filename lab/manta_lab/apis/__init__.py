"""The lab's SAPI, IMGAPI and VMAPI: one process, three loopback ports.

    apis.start(cfg)            spawn `python -m manta_lab.apis --home H` (if not
                               running) and wait until all three answer /ping
    apis.wait_ready(cfg, t)    wait for the three /ping endpoints
    apis.stop(cfg)             stop it by its recorded pid
    apis.bootstrap.ensure(cfg) the manta application, services, images, and an
                               instance + VM for every lab zone
    apis.bootstrap.register_zone(cfg, zone)   adopt a zone created later

State lives in <home>/apis/ and survives `lab down`/`lab up`. See
docs/lab-apis.md for the endpoints and the deviations from Triton.
"""
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .. import procs
from ..config import LabError
from . import bootstrap  # noqa: F401  (`lab up` calls apis.bootstrap.ensure)

NAME = "apis"
SERVICES = ("sapi", "imgapi", "vmapi")
LAB_DIR = str(Path(__file__).resolve().parents[2])


def urls(cfg):
    return {s: cfg.url(s) for s in SERVICES}


def _tail(path, n=20):
    try:
        return "".join(Path(path).read_text(errors="replace").splitlines(True)[-n:])
    except OSError:
        return ""


def start(cfg, timeout=30):
    """Start the APIs process unless it runs; return once all three answer."""
    if not cfg.path("lab.json").exists():
        cfg.save()
    if not procs.alive(cfg, NAME):
        env = dict(os.environ)
        env["PYTHONPATH"] = LAB_DIR + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        procs.spawn(cfg, NAME, [sys.executable, "-m", "manta_lab.apis", "--home", str(cfg.home)],
                    log=cfg.log(NAME), env=env)
    wait_ready(cfg, timeout)
    return urls(cfg)


def wait_ready(cfg, timeout=30):
    deadline = time.monotonic() + timeout
    pending = list(SERVICES)
    last = None
    while True:
        if not procs.alive(cfg, NAME):
            raise LabError(NAME, "the APIs process is not running: " + _tail(cfg.log(NAME)).strip(),
                           cfg.log(NAME))
        for s in list(pending):
            try:
                with urllib.request.urlopen(cfg.url(s) + "/ping", timeout=2) as r:
                    if r.status == 200:
                        pending.remove(s)
            except (urllib.error.URLError, OSError) as exc:
                last = f"{s}: {exc}"
        if not pending:
            return True
        if time.monotonic() > deadline:
            raise LabError(NAME, f"not ready after {timeout}s ({last})", cfg.log(NAME))
        time.sleep(0.1)


def stop(cfg):
    """Stop the APIs process (only the pid we recorded)."""
    return procs.stop(cfg, NAME)
