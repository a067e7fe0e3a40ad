"""Every role validates its inputs with meta/argument_specs.yml before its first task:
a missing required input or a wrong choice fails the play at "Validating arguments
against arg spec", naming the input; valid inputs pass the same validation."""
import json

import pytest

from test_collection_helpers import BIN, NS, REPO, load_yaml, roles, run, tool_env

ROLES = roles()

SAMPLE = {"str": "x", "path": "/var/tmp/x", "raw": "x", "int": 1, "float": 1.0, "bool": True,
          "list": ["x"], "dict": {}}


def spec(role):
    path = REPO / "roles" / role / "meta" / "argument_specs.yml"
    assert path.exists(), f"roles/{role}/meta/argument_specs.yml is missing"
    data = load_yaml(path)
    assert "main" in data.get("argument_specs", {}), f"roles/{role}: no argument_specs.main"
    return data["argument_specs"]["main"]


def sample(opt):
    if opt.get("choices"):
        return opt["choices"][0]
    if opt.get("default") is not None:
        return opt["default"]
    t = opt.get("type", "str")
    if t == "list" and opt.get("elements"):
        return [SAMPLE.get(opt["elements"], "x")]
    return SAMPLE.get(t, "x")


def valid_inputs(main):
    """A value for every required input, and for every input whose role default may
    be computed from other plays' facts (no default in the spec)."""
    return {k: sample(o) for k, o in (main.get("options") or {}).items()
            if o.get("required") or "default" not in o}


def play(tmp_path, role, extra):
    p = tmp_path / "play.yml"
    p.write_text(f"""\
- name: Validate {role}'s inputs
  hosts: localhost
  connection: local
  gather_facts: false
  roles:
    - role: {NS}.{role}
""")
    varfile = tmp_path / "vars.json"
    varfile.write_text(json.dumps(extra))
    env = tool_env({"MANTA_ZK_SERVERS": "127.0.0.1:1", "MANTA_SAPI_URL": "http://127.0.0.1:1"},
                   home=tmp_path / "ansible-home")
    return run([BIN / "ansible-playbook", "-i", "localhost,", "--check", p, "-e", f"@{varfile}",
                "-e", f"ansible_python_interpreter={BIN / 'python'}"], cwd=REPO, env=env, timeout=300)


def first_failure(out):
    """The name of the task that failed first, and its output block."""
    task = None
    for line in out.splitlines():
        if line.startswith("TASK ["):
            task = line
        if line.startswith(("fatal:", "failed:")):
            return task
    return None


@pytest.mark.parametrize("role", ROLES)
def test_role_has_argument_specs(role):
    main = spec(role)
    assert main.get("short_description"), f"roles/{role}: argument_specs.main.short_description"
    for name, o in (main.get("options") or {}).items():
        assert o.get("type"), f"roles/{role}: option {name} has no type"
        assert o.get("description"), f"roles/{role}: option {name} has no description"
        assert not name.startswith("_"), name


def _options(role):
    try:
        return spec(role).get("options") or {}
    except AssertionError:
        return {}  # test_role_has_argument_specs reports the missing spec


def _bad_input(opts):
    """An input with choices or a numeric type, and a value it must refuse."""
    for k, o in sorted(opts.items()):
        if o.get("choices"):
            return k, "not-a-valid-choice"
        if o.get("type") in ("int", "float"):
            return k, "not-a-number"
    return None, None


# Parametrized only over the roles each check applies to, so nothing is skipped.
ROLES_WITH_REQUIRED = [r for r in ROLES if any(o.get("required") for o in _options(r).values())]
ROLES_WITH_CHECKED = [r for r in ROLES if _bad_input(_options(r))[0]]


@pytest.mark.parametrize("role", ROLES_WITH_REQUIRED)
def test_missing_required_input_fails_first(role, tmp_path):
    main = spec(role)
    required = sorted(k for k, o in (main.get("options") or {}).items() if o.get("required"))
    r = play(tmp_path, role, {})
    assert r.returncode != 0, r.out
    assert "Validating arguments against arg spec" in (first_failure(r.stdout) or ""), r.out
    assert "missing required arguments" in r.stdout, r.out
    for k in required:
        assert k in r.stdout, f"{k} not named:\n{r.out}"


@pytest.mark.parametrize("role", ROLES_WITH_CHECKED)
def test_bad_choice_or_type_fails_first(role, tmp_path):
    main = spec(role)
    bad_name, bad_value = _bad_input(main.get("options") or {})
    r = play(tmp_path, role, {**valid_inputs(main), bad_name: bad_value})
    assert r.returncode != 0, r.out
    assert "Validating arguments against arg spec" in (first_failure(r.stdout) or ""), r.out
    assert bad_name in r.stdout, r.out


VALIDATE = """\
- name: Valid inputs pass {role}'s argument spec
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Validate
      ansible.builtin.validate_argument_spec:
        argument_spec: "{{{{ (lookup('ansible.builtin.file', spec_file) | from_yaml).argument_specs.main.options }}}}"
        provided_arguments: "{{{{ inputs }}}}"
"""


@pytest.mark.parametrize("role", ROLES)
def test_valid_inputs_pass(role, tmp_path):
    main = spec(role)
    p = tmp_path / "validate.yml"
    p.write_text(VALIDATE.format(role=role))
    varfile = tmp_path / "vars.json"
    varfile.write_text(json.dumps({"inputs": valid_inputs(main),
                                   "spec_file": str(REPO / "roles" / role / "meta" / "argument_specs.yml")}))
    r = run([BIN / "ansible-playbook", "-i", "localhost,", p, "-e", f"@{varfile}",
             "-e", f"ansible_python_interpreter={BIN / 'python'}"], cwd=REPO,
            env=tool_env(home=tmp_path / "ansible-home"), timeout=300)
    assert r.returncode == 0, r.out
