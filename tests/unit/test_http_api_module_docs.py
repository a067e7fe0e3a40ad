"""Every SAPI/IMGAPI/VMAPI module: the documentation that ansible-doc renders
(with the manta.ops.triton_api fragments merged in) matches the
argument_spec the module really uses, as ansible-test validate-modules
checks; and EXAMPLES/RETURN parse."""
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MODULES = ["sapi_metadata", "sapi_index_shards", "sapi_instance", "imgapi_image", "vmapi_vm"]
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
    assert doc["attributes"]["diff_mode"]["support"] == "full"
    assert aspec["api_token"]["no_log"] is True
    assert aspec["validate_certs"]["default"] is True
    # Each service URL has its env fallback (AWX credential injection).
    for svc, env in (("sapi", "MANTA_SAPI_URL"), ("imgapi", "MANTA_IMGAPI_URL"), ("vmapi", "MANTA_VMAPI_URL")):
        if f"{svc}_url" in aspec:
            assert aspec[f"{svc}_url"]["fallback"][1] == [env]
    assert aspec["api_token"]["fallback"][1] == ["MANTA_API_TOKEN"]


@pytest.mark.parametrize("name", MODULES)
def test_examples_and_return_parse(name, docs):
    entry = docs[f"manta.ops.{name}"]
    examples = yaml.safe_load(entry["examples"])
    assert examples and all(any(k.startswith("manta.ops.") for k in task) for task in examples)
    for task in examples:
        mod = next(k for k in task if k.startswith("manta.ops."))
        assert mod == f"manta.ops.{name}"
    assert entry["return"], "RETURN documented"
