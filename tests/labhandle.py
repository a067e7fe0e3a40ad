"""The test lab's handle and port finder, shared by the session fixture in
conftest.py and by tests that bring up a lab of their own. (A module of its own:
`import conftest` is ambiguous when several conftest.py files are loaded.)"""
import json
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
LAB = [sys.executable, "-m", "manta_lab.cli"]


class LabHandle:
    def __init__(self, home):
        self.home = home

    def run(self, *args, check=True, timeout=600):
        proc = subprocess.run([*LAB, "--home", self.home, *map(str, args)],
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"lab {' '.join(map(str, args))} exited {proc.returncode}:\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    @property
    def status(self):
        return json.loads(self.run("status", "--json").stdout)

    @property
    def cfg(self):
        from manta_lab import config
        return config.load(self.home)

    def env(self):
        """Environment a module/playbook run needs to reach this lab."""
        st = self.status
        return {"LAB_HOME": self.home,
                "MANTA_ZK_SERVERS": st["zookeeper"]["connect"],
                "MANTA_SAPI_URL": st["apis"]["sapi"],
                "MANTA_IMGAPI_URL": st["apis"]["imgapi"],
                "MANTA_VMAPI_URL": st["apis"]["vmapi"]}


def _free_base_port():
    """A base port whose whole block (fixed + dynamic ports) is free, so test
    sessions running side by side do not collide."""
    from manta_lab import config
    # Below the kernel's ephemeral range (32768+), where client sockets would
    # take our ports at random; 24000 is the default lab's block. The low
    # blocks come last: they hold well-known ports (5432, 8080) more often.
    for base in (12000, 15000, 18000, 21000, 27000, 3000, 6000, 9000):
        probe = [base + o for o in (0, 10, 11, 12, 101, 102, 151, 152, 301, 302, 303, 304)]
        probe += list(range(base + 1000, base + 1040))
        if all(config.port_free(p) for p in probe):
            return base
    raise RuntimeError("no free base port block below 30000")


def seeded_lab(name, objects, env_prefix):
    """A module's own lab, up and seeded, brought down and removed afterwards (a generator for a fixture:
    ``yield from seeded_lab(...)``). ``<env_prefix>_HOME`` reuses a running lab instead;
    ``<env_prefix>_BASE_PORT`` picks its ports; LAB_TEST_KEEP keeps its files."""
    import os
    import shutil
    import tempfile
    reuse = os.environ.get(f"{env_prefix}_HOME")
    if reuse:
        yield LabHandle(reuse)
        return
    # Not pytest's tmp dir: it is 0700 root, and postgres runs as its own user.
    home = tempfile.mkdtemp(prefix=f"manta-lab-{name}-", dir="/var/tmp")
    os.chmod(home, 0o755)
    h = LabHandle(home)
    try:
        h.run("up", "--base-port", os.environ.get(f"{env_prefix}_BASE_PORT") or str(_free_base_port()))
        h.run("seed", "--objects", str(objects))
        yield h
    finally:
        h.run("down", check=False)
        if not os.environ.get("LAB_TEST_KEEP"):
            shutil.rmtree(home, ignore_errors=True)
