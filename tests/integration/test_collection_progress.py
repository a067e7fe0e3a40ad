"""Long tasks show progress the Ansible way (reference/ansible_conventions.md section 12):
a status playbook the operator can run at any time for each long operation, and every
`until`/`retries` wait bounded, paced, and named for what it waits for (each retry prints
"FAILED - RETRYING: [host]: <name> (N retries left)"). The live side of it (per-round
events of an evacuation, the status job while jobs exist) is exercised by
test_collection_awx.py."""
import pytest
import yaml

from test_collection_helpers import REPO

LONG = {"reshard": "reshard_status", "evacuate": "evacuate_status"}


def _tasks(node):
    if isinstance(node, list):
        for t in node:
            yield from _tasks(t)
    elif isinstance(node, dict):
        if any(k in node for k in ("block", "rescue", "always")):
            for k in ("block", "rescue", "always"):
                yield from _tasks(node.get(k) or [])
        elif "tasks" in node or "pre_tasks" in node or "post_tasks" in node:  # a play
            for k in ("pre_tasks", "tasks", "post_tasks", "handlers"):
                yield from _tasks(node.get(k) or [])
        else:
            yield node


def _files():
    files = sorted((REPO / "roles").glob("*/tasks/**/*.yml")) + sorted((REPO / "playbooks").glob("*.yml"))
    return [f for f in files if "awx" not in f.parts]


def waits():
    out = []
    for f in _files():
        doc = yaml.safe_load(f.read_text()) or []
        for t in _tasks(doc):
            if "until" in t:
                out.append(pytest.param(f, t, id=f"{f.relative_to(REPO)}:{t.get('name', '?')}"[:120]))
    return out


@pytest.mark.parametrize("playbook,status", sorted(LONG.items()))
def test_status_playbook_for_each_long_operation(playbook, status):
    assert (REPO / "playbooks" / f"{playbook}.yml").exists(), f"playbooks/{playbook}.yml is missing"
    path = REPO / "playbooks" / f"{status}.yml"
    assert path.exists(), f"playbooks/{playbook}.yml has no status playbook playbooks/{status}.yml"
    text = path.read_text()
    assert "check_mode" in text or "changed_when: false" in text or "changes nothing" in text.lower(), \
        f"playbooks/{status}.yml should say (and make sure) it changes nothing"


@pytest.mark.parametrize("path,task", waits())
def test_waits_are_bounded_paced_and_named(path, task):
    name = task.get("name") or ""
    assert len(name.split()) >= 2, f"{path}: a wait needs a name that says what it waits for: {task}"
    assert "retries" in task, f"{path}: '{name}' has until without retries (default 3: a silent short wait)"
    assert "delay" in task, f"{path}: '{name}' has until without delay"
