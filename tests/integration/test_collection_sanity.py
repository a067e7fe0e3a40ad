"""`ansible-test sanity` for the collection's modules and module_utils, run locally
(no Docker) in a copy laid out as .../ansible_collections/manta/ops (ansible-test
refuses a symlinked or flat tree). Offline, it relies on the get-pip bootstrap that
scripts/setup.sh writes to ~/.ansible/test/cache/.

Scope: every sanity test ansible-test 2.21 has, on plugins/ (modules, module_utils,
doc fragments) and the collection metadata, with Python 3.13. The sanity venvs are
cached in ~/.ansible/test/venv after the first run; pylint is the slow one (~1 min).
"""
import os
import re
import shutil
from collections import defaultdict
from pathlib import Path

import pytest

from test_collection_helpers import BIN, REPO, run, tool_env

pytestmark = pytest.mark.timeout(1800)

COPY = ["plugins", "meta", "tests/sanity", "tests/config.yml", "galaxy.yml", "README.md", "changelogs"]


@pytest.fixture(scope="module")
def collection_copy(tmp_path_factory):
    root = tmp_path_factory.mktemp("sanity") / "ansible_collections" / "manta" / "ops"
    root.mkdir(parents=True)
    for rel in COPY:
        src = REPO / rel
        if src.is_dir():
            shutil.copytree(src, root / rel, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.exists():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, root / rel)
    return root


def test_get_pip_bootstrap_is_provided():
    """scripts/setup.sh put ansible-test's pip bootstrap where ansible-test looks for it."""
    cache = Path(os.path.expanduser("~/.ansible/test/cache"))
    boot = sorted(cache.glob("get_pip_*.py"))
    assert boot, f"no get_pip_*.py in {cache}: run scripts/setup.sh"
    assert "written by manta.ops scripts/setup.sh" in boot[-1].read_text()


def _grouped(text):
    by_file = defaultdict(list)
    test = None
    for line in text.splitlines():
        m = re.match(r'^Running sanity test "([^"]+)"', line)
        if m:
            test = m.group(1)
            continue
        m = re.match(r"^ERROR: ((?:plugins|meta|tests|changelogs)/[^:\s]+):(\d+):(\d+): (.*)$", line)
        if m:
            by_file[m.group(1)].append(f"[{test}] {m.group(2)}:{m.group(3)} {m.group(4)}")
    return by_file


def test_ansible_test_sanity(collection_copy):
    env = tool_env({"ANSIBLE_TEST_PREFER_PODMAN": "0"})
    env.pop("ANSIBLE_COLLECTIONS_PATH", None)
    env.pop("ANSIBLE_CONFIG", None)
    r = run([BIN / "ansible-test", "sanity", "--python", "3.13", "--color", "no", "plugins/", "meta/",
             "tests/sanity/"], cwd=collection_copy, env=env, timeout=1800)
    print(f"ansible-test sanity took {r.seconds:.0f}s")
    if r.returncode != 0:
        by_file = _grouped(r.stdout + "\n" + r.stderr)
        failed = re.findall(r"(?ms)^FATAL: The \d+ sanity test\(s\) listed below.*", r.stdout + r.stderr)
        report = "\n".join(f"{f}:\n  " + "\n  ".join(v) for f, v in sorted(by_file.items()))
        raise AssertionError("ansible-test sanity failed in these files:\n" + (report or r.out) +
                             "\n\n" + "\n".join(failed) + ("" if report else ""))
