"""Every module in plugins/modules: the documentation ansible-doc renders (loaded by
ansible's own plugin doc loader, doc fragments merged, as users and validate-modules see it) matches the argument_spec the
module really passes to AnsibleModule (names, types, defaults, required, choices,
elements, suboptions), check mode is supported, secrets are no_log, the connection
options keep their environment fallbacks (AWX credential injection), and
EXAMPLES/RETURN parse and use the module.

The loader runs once for all modules; a module added to plugins/modules is covered
without editing this file."""
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MODULES = sorted(p.stem for p in (REPO / "plugins" / "modules").glob("*.py")
                 if not p.stem.startswith("_"))

# Options that carry a secret, by name: passwords, tokens, DSNs (which may embed one).
SECRET_RE = re.compile(r"(password|token|secret|(^|_)dsns?$)")
# Connection options and the environment variable each falls back to.
ENV_FALLBACKS = {
    "pg_password": "MANTA_PG_PASSWORD",
    "zk_servers": "MANTA_ZK_SERVERS",
    "api_token": "MANTA_API_TOKEN",
    "sapi_url": "MANTA_SAPI_URL",
    "imgapi_url": "MANTA_IMGAPI_URL",
    "vmapi_url": "MANTA_VMAPI_URL",
}
# Known gaps (remove an entry when it is fixed - the test below then covers it).
NO_FALLBACK_YET = set()
# The HTTP API modules change remote objects and must show a full diff.
FULL_DIFF = {"sapi_metadata", "sapi_index_shards", "sapi_instance", "imgapi_image", "vmapi_vm"}
# Modules whose EXAMPLES may also show helper tasks (ansible.builtin.*); every task of
# every other module's EXAMPLES calls the module itself.
EXAMPLE_HELPERS = {"manatee_info", "moray_vnode_rows", "moray_vnode_rows_info"}


class Captured(Exception):
    pass


def argspec(name, monkeypatch):
    """The keyword arguments ``main()`` passes to AnsibleModule (captured, nothing runs)."""
    mod = importlib.import_module(f"ansible_collections.manta.ops.plugins.modules.{name}")

    def capture(**kw):
        raise Captured(kw)
    monkeypatch.setattr(mod, "AnsibleModule", capture)
    with pytest.raises(Captured) as exc:
        mod.main()
    return exc.value.args[0]


# ansible's own plugin doc loader, as ansible-doc uses it (fragments merged), in one
# child process for all modules; a module whose documentation does not load gets an
# "error" entry, so it fails its own tests and not everyone's.
LOADER = """
import json, sys
from ansible.plugins.loader import fragment_loader, init_plugin_loader, module_loader
from ansible.utils.plugin_docs import get_plugin_docs
init_plugin_loader([sys.argv[1]])
out = {}
for name in sys.argv[2:]:
    try:
        doc, examples, returns, _meta = get_plugin_docs(name, "module", module_loader,
                                                        fragment_loader, False)
        out[name] = {"doc": doc, "examples": examples, "return": returns}
    except Exception as exc:
        out[name] = {"error": f"{type(exc).__name__}: {exc}"}
json.dump(out, sys.stdout, default=str)
"""


@pytest.fixture(scope="module")
def docs():
    proc = subprocess.run([sys.executable, "-c", LOADER, str(REPO / ".venv" / "collections"),
                           *[f"manta.ops.{m}" for m in MODULES]],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def entry_of(docs, name):
    entry = docs[f"manta.ops.{name}"]
    assert "error" not in entry, f"documentation of {name} does not load: {entry.get('error')}"
    return entry


def test_every_module_is_covered(docs):
    assert len(MODULES) >= 20, MODULES
    assert sorted(docs) == [f"manta.ops.{m}" for m in MODULES]
    assert {"zk_lock", "sapi_instance", "moray_vnode_rows", "reshard_plan"} <= set(MODULES)
    assert FULL_DIFF | EXAMPLE_HELPERS <= set(MODULES), "stale names in this test's tables"


def compare(opts, aspec, where):
    assert set(opts) == set(aspec), f"{where}: documented {sorted(opts)} vs spec {sorted(aspec)}"
    for key, a in aspec.items():
        d = opts[key]
        assert d.get("type", "str") == a.get("type", "str"), (where, key)
        assert d.get("default") == a.get("default"), (where, key)
        assert bool(d.get("required", False)) == bool(a.get("required", False)), (where, key)
        assert d.get("choices") == a.get("choices"), (where, key)
        assert d.get("elements") == a.get("elements"), (where, key)
        assert bool(a.get("options")) == bool(d.get("suboptions")), (where, key, "suboptions")
        if a.get("options"):
            compare(d["suboptions"], a["options"], f"{where}.{key}")


@pytest.mark.parametrize("name", MODULES)
def test_doc_matches_argument_spec(name, docs, monkeypatch):
    doc = entry_of(docs, name)["doc"]
    assert doc["module"] == name and doc.get("short_description")
    spec = argspec(name, monkeypatch)
    assert spec.get("supports_check_mode") is True
    aspec = spec["argument_spec"]
    compare(doc["options"], aspec, name)
    assert doc["attributes"]["check_mode"]["support"] == "full"
    assert doc["attributes"]["diff_mode"]["support"] in ("full", "partial", "none")
    if name in FULL_DIFF:
        assert doc["attributes"]["diff_mode"]["support"] == "full"


@pytest.mark.parametrize("name", MODULES)
def test_secrets_and_connection_options(name, monkeypatch):
    aspec = argspec(name, monkeypatch)["argument_spec"]
    for key, a in aspec.items():
        if SECRET_RE.search(key):
            assert a.get("no_log") is True, f"{name}: option {key} holds a secret and needs no_log"
    for key, env in ENV_FALLBACKS.items():
        if key in aspec and (name, key) not in NO_FALLBACK_YET:
            assert aspec[key].get("fallback", (None, None))[1] == [env], \
                f"{name}: option {key} should fall back to the {env} environment variable"
    if "validate_certs" in aspec:
        assert aspec["validate_certs"]["default"] is True, "HTTPS certificates verified by default"


def test_secret_pattern():
    for key in ("pg_password", "api_token", "dsn", "owner_dsn", "shard_dsns", "job_dsn"):
        assert SECRET_RE.search(key), key
    for key in ("keys", "key", "marker_key", "dsn_file", "zk_servers"):
        assert not SECRET_RE.search(key), key


def test_throttle_defaults_are_the_documented_ones(docs):
    from ansible_collections.manta.ops.plugins.module_utils import throttle
    opts = entry_of(docs, "moray_vnode_rows")["doc"]["options"]
    for k, v in throttle.DEFAULTS.items():
        assert opts[k]["default"] == v, k


@pytest.mark.parametrize("name", MODULES)
def test_examples_and_return_parse(name, docs):
    entry = entry_of(docs, name)
    examples = yaml.safe_load(entry["examples"])
    assert examples and isinstance(examples, list)
    used = []
    for task in examples:
        mods = [k for k in task if k.startswith(("manta.ops.", "ansible.builtin."))]
        assert len(mods) == 1, f"{name}: example task {task.get('name')!r} calls {mods}"
        used.append(mods[0])
        if mods[0].startswith("manta.ops."):
            assert mods[0] == f"manta.ops.{name}", f"{name}: example calls {mods[0]}"
    assert f"manta.ops.{name}" in used
    if name not in EXAMPLE_HELPERS:
        assert set(used) == {f"manta.ops.{name}"}, used
    assert entry["return"], "RETURN documented"
    for key in entry["return"]:
        # Ansible's own result keys would be shadowed
        assert key.isidentifier() and key not in ("skipped", "results", "failed", "changed", "msg", "rc"), \
            f"{name}: RETURN key {key!r}"
