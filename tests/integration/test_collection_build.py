"""The Galaxy path: `ansible-galaxy collection build` makes a clean tarball, it installs
into an empty path, and a playbook written with FQCNs runs from that installed copy
(not from the repo)."""
import tarfile

import pytest

from test_collection_helpers import BIN, REPO, load_yaml, modules, roles, run, tool_env

# Nothing of these may ever be in the tarball.
FORBIDDEN_PARTS = {".venv", ".lab", ".cache", ".pytest_cache", "__pycache__", ".git", ".ansible", "context"}
FORBIDDEN_PREFIXES = ("bench/results/", "tests/output/", "build/")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("galaxy-build")
    r = run([BIN / "ansible-galaxy", "collection", "build", "--force", "--output-path", out, REPO], cwd=out)
    assert r.returncode == 0, r.out
    version = load_yaml(REPO / "galaxy.yml")["version"]
    tarball = out / f"manta-ops-{version}.tar.gz"
    assert tarball.exists(), r.out
    return tarball


@pytest.fixture(scope="module")
def installed(built, tmp_path_factory):
    """The tarball installed into an empty collections path."""
    dest = tmp_path_factory.mktemp("collections")
    # --force: the repo's own copy (on the venv's collections path) would
    # otherwise make ansible-galaxy report "already installed".
    r = run([BIN / "ansible-galaxy", "collection", "install", "--force", "--offline", "--no-deps",
             "-p", dest, built], cwd=dest)
    assert r.returncode == 0, r.out
    root = dest / "ansible_collections" / "manta" / "ops"
    assert (root / "MANIFEST.json").exists(), r.out
    return dest


def test_tarball_is_clean(built):
    with tarfile.open(built) as tf:
        names = tf.getnames()
    bad = [n for n in names
           if FORBIDDEN_PARTS & set(n.split("/")) or n.startswith(FORBIDDEN_PREFIXES)
           or n.endswith((".pyc", ".pyo", ".tar.gz", ".sqlite", ".log"))]
    assert not bad, f"tarball carries lab data, venvs or caches: {bad[:20]}"
    for must in ("MANIFEST.json", "FILES.json", "README.md", "meta/runtime.yml",
                 "meta/execution-environment.yml", "changelogs/changelog.yaml"):
        assert must in names, must
    for m in modules():
        assert f"plugins/modules/{m}.py" in names, m
    for role in roles():
        assert f"roles/{role}/tasks/main.yml" in names, role
    # Small: no lab state, no wheels.
    assert built.stat().st_size < 5_000_000, built.stat().st_size


def test_installed_collection_is_listed(installed):
    r = run([BIN / "ansible-galaxy", "collection", "list", "manta.ops", "-p", installed, "--format", "json"],
            cwd=installed, env=tool_env({"ANSIBLE_COLLECTIONS_PATH": str(installed)}))
    assert r.returncode == 0, r.out
    assert str(installed / "ansible_collections") in r.stdout, r.out
    assert "manta.ops" in r.stdout


def test_ansible_doc_from_installed_copy(installed):
    r = run([BIN / "ansible-doc", "manta.ops.fash_ring"], cwd=installed,
            env=tool_env({"ANSIBLE_COLLECTIONS_PATH": str(installed)}))
    assert r.returncode == 0, r.out
    assert str(installed / "ansible_collections" / "manta" / "ops" / "plugins" / "modules" / "fash_ring.py") \
        in r.stdout, r.out


PLAYBOOK = """\
- name: Use manta.ops by FQCN from the installed collection
  hosts: localhost
  connection: local
  gather_facts: false
  vars:
    ring: "{{ workdir }}/hash_ring"
  tasks:
    - name: Create a 64-vnode ring over two shards
      manta.ops.fash_ring:
        path: "{{ ring }}"
        vnodes: 64
        pnodes:
          - tcp://1.moray.example.com:2020
          - tcp://2.moray.example.com:2020
      register: created

    - name: Create it again (idempotent)
      manta.ops.fash_ring:
        path: "{{ ring }}"
        vnodes: 64
        pnodes:
          - tcp://1.moray.example.com:2020
          - tcp://2.moray.example.com:2020
      register: again

    - name: Vnodes of shard 1
      manta.ops.fash_ring_info:
        path: "{{ ring }}"
        pnode: tcp://1.moray.example.com:2020
      register: shard1

    - name: Check
      ansible.builtin.assert:
        that:
          - created is changed
          - again is not changed
          - shard1 is not changed
        quiet: true
"""


def test_fqcn_playbook_runs_from_installed_copy(installed, tmp_path):
    play = tmp_path / "fqcn.yml"
    play.write_text(PLAYBOOK)
    (tmp_path / "ansible.cfg").write_text("[defaults]\n")  # not the repo's (it points at the repo's copy)
    env = tool_env({"ANSIBLE_COLLECTIONS_PATH": str(installed), "ANSIBLE_CONFIG": str(tmp_path / "ansible.cfg")},
                   home=tmp_path / "ansible-home")
    r = run([BIN / "ansible-playbook", "-i", "localhost,", "-vvv", play,
             "-e", f"workdir={tmp_path}", "-e", f"ansible_python_interpreter={BIN / 'python'}"],
            cwd=tmp_path, env=env, timeout=300)
    assert r.returncode == 0, r.out
    # The modules that ran are the installed ones, not the repo's.
    used = [ln for ln in r.stdout.splitlines() if ln.startswith("Using module file")]
    assert used, r.out
    assert all(str(installed) in ln for ln in used), used
    assert "failed=0" in r.stdout
