"""ansible-lint (production profile) over the collection's Ansible content, and the
changelog kept with antsibull-changelog fragments."""
import re
import shutil
from collections import defaultdict

from test_collection_helpers import BIN, REPO, load_yaml, modules, run, tool_env

LINTED = ["roles", "playbooks", "molecule", "galaxy.yml", "meta", "tests/sanity",
          "execution-environment.yml", "inventories/example"]


def _grouped(output):
    by_file = defaultdict(list)
    for line in output.splitlines():
        m = re.match(r"^([^\s:]+):(\d+)(?::\d+)?: (.*)$", line)
        if m:
            by_file[m.group(1)].append(f"{m.group(2)}: {m.group(3)}")
    return "\n".join(f"{f}:\n  " + "\n  ".join(v) for f, v in sorted(by_file.items()))


def test_ansible_lint_production(tmp_path):
    cfg = load_yaml(REPO / ".ansible-lint")
    assert cfg["profile"] == "production"
    paths = [p for p in LINTED if (REPO / p).exists()]
    env = tool_env({"ANSIBLE_LINT_NODEPS": "0"}, home=tmp_path / "ansible-home")
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    r = run([BIN / "ansible-lint", "--offline", "--nocolor", "-f", "pep8", *paths], env=env, timeout=900)
    assert r.returncode == 0, "ansible-lint --profile production failed:\n" + \
        (_grouped(r.stdout) or r.out) + "\n\n" + r.stderr[-3000:]


def test_changelog_fragments_lint():
    assert (REPO / "changelogs" / "config.yaml").exists()
    assert (REPO / "changelogs" / "changelog.yaml").exists()
    assert list((REPO / "changelogs" / "fragments").glob("*.yml")), "no changelog fragments"
    r = run([BIN / "antsibull-changelog", "lint"])
    assert r.returncode == 0 and not r.stdout.strip(), r.out


def test_changelog_release_rehearsal(tmp_path):
    """`antsibull-changelog release` on a copy folds the fragments and lists the
    modules from their version_added; the repo itself is not touched."""
    root = tmp_path / "ansible_collections" / "manta" / "ops"
    root.mkdir(parents=True)
    for p in ("galaxy.yml", "README.md", "changelogs", "plugins", "roles", "meta", "playbooks"):
        src = REPO / p
        if src.is_dir():
            shutil.copytree(src, root / p, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.exists():
            shutil.copy2(src, root / p)
    version = load_yaml(REPO / "galaxy.yml")["version"]
    r = run([BIN / "antsibull-changelog", "release", "--version", version, "--date", "2026-01-01"],
            cwd=root, env=tool_env({"ANSIBLE_COLLECTIONS_PATH": str(tmp_path)}))
    assert r.returncode == 0, r.out
    text = (root / "CHANGELOG.rst").read_text()
    assert f"v{version}" in text
    for m in modules():
        assert f"manta.ops.{m}" in text, f"{m} is not in the rendered changelog's New Modules"
    assert not list((root / "changelogs" / "fragments").glob("*.yml")), "fragments were not folded in"
