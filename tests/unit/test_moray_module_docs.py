"""moray_vnode_rows and moray_vnode_rows_info: the documentation ansible-doc renders
(zookeeper fragment merged) matches the argument_spec the module really uses
(types, defaults, choices, required, elements, suboptions), secrets are no_log,
check mode is supported, and EXAMPLES/RETURN parse."""
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MODULES = ["moray_vnode_rows", "moray_vnode_rows_info"]
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


def _compare(opts, aspec, where):
    assert set(opts) == set(aspec), f"{where}: documented {sorted(opts)} vs spec {sorted(aspec)}"
    for key, a in aspec.items():
        d = opts[key]
        assert d.get("type", "str") == a.get("type", "str"), (where, key)
        assert d.get("default") == a.get("default"), (where, key)
        assert bool(d.get("required", False)) == bool(a.get("required", False)), (where, key)
        assert d.get("choices") == a.get("choices"), (where, key)
        assert d.get("elements") == a.get("elements"), (where, key)
        if a.get("options"):
            _compare(d["suboptions"], a["options"], f"{where}.{key}")


@pytest.mark.parametrize("name", MODULES)
def test_doc_matches_argument_spec(name, docs, monkeypatch):
    doc = docs[f"manta.ops.{name}"]["doc"]
    spec = argspec(name, monkeypatch)
    assert spec.get("supports_check_mode") is True
    _compare(doc["options"], spec["argument_spec"], name)
    aspec = spec["argument_spec"]
    for secret in ("dsn", "pg_password", "owner_dsn"):
        if secret in aspec:
            assert aspec[secret]["no_log"] is True, secret
    assert aspec["pg_password"]["fallback"][1] == ["MANTA_PG_PASSWORD"]
    assert aspec["zk_servers"]["fallback"][1] == ["MANTA_ZK_SERVERS"]
    assert doc["attributes"]["check_mode"]["support"] == "full"


def test_throttle_defaults_are_the_documented_ones(docs):
    from ansible_collections.manta.ops.plugins.module_utils import throttle
    opts = docs["manta.ops.moray_vnode_rows"]["doc"]["options"]
    for k, v in throttle.DEFAULTS.items():
        assert opts[k]["default"] == v, k


@pytest.mark.parametrize("name", MODULES)
def test_examples_and_return_parse(name, docs):
    entry = docs[f"manta.ops.{name}"]
    examples = yaml.safe_load(entry["examples"])
    assert examples
    used = [next(k for k in task if k.startswith(("manta.ops.", "ansible.builtin."))) for task in examples]
    assert f"manta.ops.{name}" in used
    assert entry["return"], "RETURN documented"
