"""Documentation an operator reads: `ansible-doc manta.ops.<module>` for every module,
`ansible-doc -t role` for every role, the generated module reference, and one page in
docs/ per playbook and per role (inputs, outputs, examples, rehearsal workflow)."""
import json
import re

import pytest

from test_collection_helpers import BIN, NS, REPO, modules, playbooks, roles, run

MODULES = modules()
ROLES = roles()
PLAYBOOKS = playbooks()


@pytest.fixture(scope="module")
def doc_json():
    """ansible-doc --json for all modules at once; per module when one is broken."""
    r = run([BIN / "ansible-doc", "--json", "-t", "module", *(f"{NS}.{m}" for m in MODULES)])
    if r.returncode == 0:
        return {k.split(".")[-1]: v for k, v in json.loads(r.stdout).items()}, {}
    docs, errors = {}, {}
    for m in MODULES:
        one = run([BIN / "ansible-doc", "--json", "-t", "module", f"{NS}.{m}"])
        if one.returncode == 0 and one.stdout.strip():
            docs.update({k.split(".")[-1]: v for k, v in json.loads(one.stdout).items()})
        else:
            errors[m] = one.out
    return docs, errors


ANSI = re.compile(r"\x1b\[[0-9;]*m|\x1b\]8;;[^\x1b]*\x1b\\\\")


def plain(text):
    """ansible-doc text without colour codes nor the `*bold*` marks it uses without colour."""
    return re.sub(r"\*([^*\s]+)\*", r"\1", ANSI.sub("", text))


@pytest.fixture(scope="module")
def doc_text():
    """`ansible-doc manta.ops.<module>` as an operator sees it: all modules in one
    run, split per module; per module when one does not render."""
    r = run([BIN / "ansible-doc", *(f"{NS}.{m}" for m in MODULES)])
    if r.returncode == 0:
        parts = re.split(r"(?m)^> MODULE ", plain(r.stdout))
        return {m: "> MODULE " + p for p in parts[1:] for m in [p.split()[0].split(".")[-1]]}
    return {m: run([BIN / "ansible-doc", f"{NS}.{m}"]) for m in MODULES}


@pytest.mark.parametrize("module", MODULES)
def test_ansible_doc_renders(module, doc_text, doc_json):
    text = doc_text.get(module)
    if not isinstance(text, str):  # the per-module fallback: a Ran
        assert text.returncode == 0, text.out
        text = plain(text.stdout)
    assert text and f"{NS}.{module}" in text, f"ansible-doc {NS}.{module} did not render"
    assert "EXAMPLES:" in text and "OPTIONS" in text, text
    docs, errors = doc_json
    assert module in docs, errors.get(module)
    doc = docs[module]["doc"]
    assert doc["module"] == module
    assert doc.get("short_description") and not doc["short_description"].endswith(".")
    assert doc.get("description") and doc.get("version_added") and doc.get("author")
    attrs = doc.get("attributes") or {}
    assert {"check_mode", "diff_mode"} <= set(attrs), f"{module}: attributes check_mode/diff_mode missing"
    for name, opt in (doc.get("options") or {}).items():
        assert opt.get("type"), f"{module}: option {name} has no type"
        assert opt.get("description"), f"{module}: option {name} has no description"
    examples = docs[module].get("examples") or ""
    assert f"{NS}.{module}:" in examples, f"{module}: EXAMPLES do not use the FQCN {NS}.{module}"
    assert docs[module].get("return"), f"{module}: no RETURN block (what a task can register)"


def test_module_reference_up_to_date():
    r = run([BIN / "python", REPO / "scripts" / "gen_module_docs.py", "--check"])
    assert r.returncode == 0, "docs/reference/ is stale or a module's documentation does not parse: run " \
        "`.venv/bin/python scripts/gen_module_docs.py`\n" + r.out
    index = (REPO / "docs" / "reference" / "README.md").read_text()
    for m in MODULES:
        assert f"({m}.md)" in index, m


@pytest.mark.parametrize("role", ROLES)
def test_ansible_doc_role(role):
    """meta/argument_specs.yml exists and renders: `ansible-doc -t role manta.ops.<role>`."""
    assert (REPO / "roles" / role / "meta" / "argument_specs.yml").exists(), \
        f"roles/{role}/meta/argument_specs.yml is missing"
    r = run([BIN / "ansible-doc", "-t", "role", f"{NS}.{role}"])
    assert r.returncode == 0 and "ENTRY POINT: main" in plain(r.stdout), r.out


def _pages():
    return {p: p.read_text() for p in (REPO / "docs").rglob("*.md") if "reference" not in p.parts}


def _page_for(pattern, pages):
    return [p for p, text in pages.items() if re.search(pattern, text)]


# What an operator's page must cover, as words or commands found in it.
REQUIRED = {
    "inputs": r"(?im)^#+ .*\b(inputs?|variables|parameters)\b",
    "outputs": r"(?im)^#+ .*\b(outputs?|results?|reports?|returns?)\b",
    "examples": r"(?im)^#+ .*\bexamples?\b|```(sh|bash|shell|console)?\s*\n[^`]*ansible-playbook",
    "rehearsal": r"--check",
}


def _missing_sections(text):
    return [k for k, rx in REQUIRED.items() if not re.search(rx, text)]


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_docs_page_per_playbook(playbook):
    pages = _pages()
    page = REPO / "docs" / f"{playbook}.md"
    cands = [page] if page in pages else _page_for(rf"playbooks/{re.escape(playbook)}\.yml", pages)
    assert cands, f"no page in docs/ for playbooks/{playbook}.yml (expected docs/{playbook}.md)"
    best = min(cands, key=lambda p: len(_missing_sections(pages[p])))
    missing = _missing_sections(pages[best])
    assert not missing, f"{best.relative_to(REPO)} (for playbooks/{playbook}.yml) lacks: {missing}"


@pytest.mark.parametrize("role", ROLES)
def test_docs_page_per_role(role):
    pages = _pages()
    cands = [p for p in (REPO / "docs" / f"{role}.md", REPO / "docs" / "roles" / f"{role}.md") if p in pages] \
        or _page_for(rf"(manta\.ops\.{re.escape(role)}\b|roles/{re.escape(role)}\b|`{re.escape(role)}`)", pages)
    assert cands, f"no page in docs/ for role {NS}.{role}"
    best = min(cands, key=lambda p: len(_missing_sections(pages[p])))
    missing = _missing_sections(pages[best])
    assert not missing, f"{best.relative_to(REPO)} (for role {NS}.{role}) lacks: {missing}"
