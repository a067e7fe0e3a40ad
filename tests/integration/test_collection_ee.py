"""The execution environment: `ansible-builder create` turns execution-environment.yml
into a build context (no container engine needed), whose galaxy stage installs the
collection tarball offline and whose introspection finds the collection's Python and
system dependencies (meta/execution-environment.yml)."""
import re
import shutil

import pytest
import yaml

from test_collection_helpers import BIN, REPO, load_yaml, run

MODULE_LIBS = {"kazoo", "psycopg2-binary", "plyvel", "requests"}


def _names(reqs):
    return {re.split(r"[<>=!~ \[;#]", r.strip(), maxsplit=1)[0].lower() for r in reqs if r.strip()}


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    work = tmp_path_factory.mktemp("ee")
    shutil.copy2(REPO / "execution-environment.yml", work)
    shutil.copy2(REPO / "bindep.txt", work)
    build = work / "build"
    r = run([BIN / "ansible-galaxy", "collection", "build", "--force", "--output-path", build, REPO], cwd=work)
    assert r.returncode == 0, r.out
    (tarball,) = build.glob("manta-ops-*.tar.gz")
    tarball.rename(build / "manta-ops.tar.gz")  # the version-free name the EE file uses
    r = run([BIN / "ansible-builder", "create", "-f", "execution-environment.yml", "-c", work / "context",
             "--output-filename", "Containerfile"], cwd=work)
    assert r.returncode == 0, r.out
    print(f"ansible-builder create took {r.seconds:.1f}s")
    return work / "context"


def test_definition():
    ee = load_yaml(REPO / "execution-environment.yml")
    assert ee["version"] == 3
    deps = ee["dependencies"]
    assert deps["ansible_core"]["package_pip"] == "ansible-core==2.21.5"
    assert deps["ansible_runner"]["package_pip"].startswith("ansible-runner==")
    assert MODULE_LIBS <= _names(deps["python"])
    assert deps["system"] == "bindep.txt" and (REPO / "bindep.txt").exists()
    # The collection-side file builder's introspection reads.
    meta = load_yaml(REPO / "meta" / "execution-environment.yml")
    assert MODULE_LIBS <= _names((REPO / meta["dependencies"]["python"]).read_text().splitlines())
    assert meta["dependencies"]["system"] == "bindep.txt"


def test_builder_create(context):
    cf = (context / "Containerfile").read_text()
    for stage in ("AS base", "AS galaxy", "AS builder", "AS final"):
        assert stage in cf, stage
    assert "ansible-core==2.21.5" in cf
    assert (context / "_build" / "collections" / "manta-ops.tar.gz").exists()
    assert "python3" in cf and "/usr/bin/python3" in cf
    reqs = (context / "_build" / "requirements.txt").read_text().splitlines()
    assert MODULE_LIBS <= _names(reqs)
    assert "postgresql" in (context / "_build" / "bindep.txt").read_text()


def test_galaxy_stage_installs_offline(context, tmp_path):
    """What the galaxy stage runs, here: the requirements install the tarball, offline."""
    dest = tmp_path / "collections"
    r = run([BIN / "ansible-galaxy", "collection", "install", "--force", "--offline", "--no-deps",
             "-r", "requirements.yml", "--collections-path", dest], cwd=context / "_build")
    assert r.returncode == 0, r.out
    assert (dest / "ansible_collections" / "manta" / "ops" / "MANIFEST.json").exists()


def test_introspection_finds_collection_deps(context, tmp_path):
    """What the builder stage runs: introspect.py over the installed collections."""
    dest = tmp_path / "collections"
    run([BIN / "ansible-galaxy", "collection", "install", "--force", "--offline", "--no-deps",
         "-r", "requirements.yml", "--collections-path", dest], cwd=context / "_build", check=True)
    r = run([BIN / "python", context / "_build" / "scripts" / "introspect.py", "introspect", dest], cwd=tmp_path)
    assert r.returncode == 0, r.out
    data = yaml.safe_load(r.stdout)
    assert MODULE_LIBS <= _names(data["python"]), data
    assert any("from collection manta.ops" in s for s in data["system"]), data
