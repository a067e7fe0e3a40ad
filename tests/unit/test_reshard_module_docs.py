"""Every reshard module: ansible-doc renders it (fragments merged), its documented options match the
argument_spec it really uses, check mode is supported, and EXAMPLES/RETURN parse."""
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MODULES = ["reshard_plan", "reshard_journal", "reshard_em_ring", "reshard_cutover", "reshard_catchup",
           "reshard_rings", "reshard_canary", "reshard_dumps"]
ANSIBLE_DOC = str(Path(sys.executable).parent / "ansible-doc")


class Captured(Exception):
    pass


def argspec(name, monkeypatch):
    mod = importlib.import_module(f"ansible_collections.manta.ops.plugins.modules.{name}")

    def capture(**kw):
        raise Captured(kw)
    monkeypatch.setattr(mod, "AnsibleModule", capture)
    with pytest.raises(Captured) as exc:
        mod.main()
    return exc.value.args[0]


@pytest.fixture(scope="module")
def docs():
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(REPO / ".venv" / "collections"))
    proc = subprocess.run([ANSIBLE_DOC, "--json", *[f"manta.ops.{m}" for m in MODULES]],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("name", MODULES)
def test_doc_matches_argument_spec(name, docs, monkeypatch):
    doc = docs[f"manta.ops.{name}"]["doc"]
    spec = argspec(name, monkeypatch)
    assert spec.get("supports_check_mode") is True
    opts = doc["options"]
    aspec = spec["argument_spec"]
    assert set(opts) == set(aspec), f"documented {sorted(opts)} vs spec {sorted(aspec)}"
    for key, a in aspec.items():
        d = opts[key]
        assert d.get("type", "str") == a.get("type", "str"), key
        assert d.get("default") == a.get("default"), key
        assert bool(d.get("required", False)) == bool(a.get("required", False)), key
        assert d.get("choices") == a.get("choices"), key
        assert d.get("elements") == a.get("elements"), key
    assert doc["attributes"]["check_mode"]["support"] == "full"
    if "pg_password" in aspec:
        assert aspec["pg_password"]["no_log"] is True


@pytest.mark.parametrize("name", MODULES)
def test_examples_and_return_parse(name, docs):
    entry = docs[f"manta.ops.{name}"]
    examples = yaml.safe_load(entry["examples"])
    assert examples
    for task in examples:
        assert f"manta.ops.{name}" in task
    assert entry["return"], "RETURN documented"
