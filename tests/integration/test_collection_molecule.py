"""molecule test for every scenario under molecule/ (reshard, evacuate) against a lab of
their own: syntax, prepare, converge, idempotence (a second converge changes nothing),
verify (and cleanup where the scenario has one). No container driver is involved: the
scenarios converge localhost and the lab's hosts through inventories/lab."""
import re

import pytest

from test_collection_helpers import BIN, REPO, lab_env, private_lab, run, tool_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3000)]

SCENARIOS = sorted(p.parent.name for p in (REPO / "molecule").glob("*/molecule.yml"))


@pytest.fixture(scope="module")
def molecule_lab():
    with private_lab("manta-lab-molecule-") as lab:
        yield lab


def test_scenarios_exist():
    assert {"reshard", "evacuate"} <= set(SCENARIOS), SCENARIOS


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule(scenario, molecule_lab, tmp_path):
    env = tool_env(lab_env(molecule_lab), home=tmp_path / "ansible-home")
    r = run([BIN / "molecule", "test", "-s", scenario], env=env, timeout=3000)
    print(f"molecule test -s {scenario}: {r.seconds:.0f}s")
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"molecule test -s {scenario} failed:\n" + out[-15000:]
    for step in ("converge", "idempotence", "verify"):
        assert re.search(rf"(?i)\b{step}\b", out), f"no {step} step in the output"
    assert not re.search(r"(?i)idempotence test failed", out), out[-8000:]
