"""Shared helpers of the collection-level tests (tests/integration/test_collection_*.py).

They iterate over whatever modules, roles and playbooks exist (globbing), run the
collection's own tools from the venv, and keep every side effect in a scratch
directory. A private lab (`private_lab()`) is brought up for the tests that change
the lab (molecule converges, the AWX-style evacuation), so that they never disturb
the session `lab` other tests share.

This file also holds the tests of the helpers' own invariants (the sanity ignore
file and the generated module reference are in sync with plugins/modules).
"""
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".venv"
BIN = VENV / "bin"
NS = "manta.ops"


def modules():
    return sorted(p.stem for p in (REPO / "plugins" / "modules").glob("*.py") if p.stem != "__init__")


def roles():
    return sorted(p.name for p in (REPO / "roles").iterdir() if (p / "tasks" / "main.yml").exists()) \
        if (REPO / "roles").is_dir() else []


def playbooks():
    """Top-level playbooks (playbooks/*.yml); playbooks/awx/ is AWX as code, tested on its own."""
    return sorted(p.stem for p in (REPO / "playbooks").glob("*.yml"))


def tool_env(extra=None, home=None):
    """Environment for the venv's ansible tools: venv first on PATH, no colour,
    and ANSIBLE_HOME / async dir in a scratch dir when given."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(VENV)
    env.update(ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", NO_COLOR="1", PY_COLORS="0",
               ANSIBLE_DEPRECATION_WARNINGS="0", PYTHONUNBUFFERED="1")
    if home:
        env["ANSIBLE_HOME"] = str(home)
        env["ANSIBLE_ASYNC_DIR"] = str(Path(home) / "async")
        env["ANSIBLE_LOCAL_TEMP"] = str(Path(home) / "tmp")
    env.update(extra or {})
    return env


class Ran:
    def __init__(self, proc, seconds, cmd):
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.seconds = seconds
        self.cmd = cmd

    @property
    def out(self):
        return f"$ {' '.join(map(str, self.cmd))}\n(exit {self.returncode}, {self.seconds:.1f}s)\n" \
               f"--- stdout ---\n{self.stdout[-12000:]}\n--- stderr ---\n{self.stderr[-6000:]}"


def run(cmd, cwd=REPO, env=None, timeout=900, check=False):
    t0 = time.monotonic()
    proc = subprocess.run([str(c) for c in cmd], cwd=str(cwd), env=env or tool_env(),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    ran = Ran(proc, time.monotonic() - t0, cmd)
    if check and proc.returncode != 0:
        raise AssertionError(ran.out)
    return ran


def load_yaml(path):
    with open(path) as fh:
        return yaml.safe_load(fh)


# --- a private lab for the tests that change it ---------------------------------------

@contextlib.contextmanager
def private_lab(prefix="manta-lab-coll-"):
    """A lab of its own, up for the duration of the block, brought down by pid after.
    LAB_TEST_HOME reuses a running lab instead (left up), as the session fixture does."""
    sys.path.insert(0, str(REPO / "tests"))
    import labhandle as conftest  # the session fixture's handle and free-port finder
    reuse = os.environ.get("LAB_COLLECTION_TEST_HOME")
    if reuse:
        yield conftest.LabHandle(reuse)
        return
    home = tempfile.mkdtemp(prefix=prefix, dir="/var/tmp")
    os.chmod(home, 0o755)
    handle = conftest.LabHandle(home)
    try:
        handle.run("up", "--base-port", str(conftest._free_base_port()))
        yield handle
    finally:
        handle.run("down", check=False)
        if not os.environ.get("LAB_TEST_KEEP"):
            shutil.rmtree(home, ignore_errors=True)


def lab_env(lab):
    """What an AWX credential of type "Manta connection" injects, for this lab."""
    env = lab.env()
    env.setdefault("MANTA_PG_USER", "postgres")
    return env


# --- tests of the helpers' invariants ---------------------------------------------------

def test_sanity_ignore_file_lists_every_module():
    """tests/sanity/ignore-2.21.txt has exactly one missing-gplv3-license line per module."""
    r = run([BIN / "python", REPO / "tests" / "sanity" / "generate_ignores.py", "--check"])
    assert r.returncode == 0, "tests/sanity/ignore-*.txt is stale: run " \
        "`.venv/bin/python tests/sanity/generate_ignores.py`\n" + r.out
    lines = (REPO / "tests" / "sanity" / "ignore-2.21.txt").read_text().splitlines()
    assert {ln.split()[0] for ln in lines} == {f"plugins/modules/{m}.py" for m in modules()}
    assert all(ln.split()[1] == "validate-modules:missing-gplv3-license" for ln in lines)


def test_galaxy_metadata_complete():
    g = load_yaml(REPO / "galaxy.yml")
    for key in ("namespace", "name", "version", "readme", "authors", "description", "license",
                "tags", "dependencies", "repository", "documentation", "homepage", "issues", "build_ignore"):
        assert g.get(key) not in (None, "", []) or key == "dependencies", f"galaxy.yml lacks {key}"
    assert (g["namespace"], g["name"]) == ("manta", "ops")
    assert g["license"] == ["MPL-2.0"]
    assert isinstance(g["dependencies"], dict)
    assert {"storage", "database", "infrastructure"} & set(g["tags"])
    for ignored in (".venv", ".lab", ".cache", ".pytest_cache", "bench/results", "tests/output"):
        assert ignored in g["build_ignore"], ignored
    assert json.loads(json.dumps(g))  # plain data
