"""The README's main command, `bin/main`, on a lab of its own: it reshards shard 1 into a new shard 3 and
then evacuates storage node 3.stor, end to end; a second run finds both done and changes nothing.

The lab is brought up and seeded by the test first (with the seed marker `bin/main` looks for), so the
objects before the run are known and every invariant of both procedures can be checked against them.
"""
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg2
import pytest

from labhandle import REPO, LabHandle, _free_base_port
from test_evacuate_support import Lab, check_evacuated

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]
SEED = 20000   # playbooks/lab_demo.yml's default seed_objects


@pytest.fixture(scope="module")
def mlab():
    home = tempfile.mkdtemp(prefix="manta-lab-main-", dir="/var/tmp")
    os.chmod(home, 0o755)
    h = LabHandle(home)
    try:
        h.run("up", "--base-port", str(_free_base_port()))
        h.run("seed", "--objects", str(SEED))
        Path(home, f"seeded-{SEED}").touch()
        yield h
    finally:
        h.run("down", check=False)
        shutil.rmtree(home, ignore_errors=True)


def bin_main(lab):
    env = dict(os.environ, LAB_HOME=lab.home, ANSIBLE_NOCOLOR="1", ANSIBLE_STDOUT_CALLBACK="default")
    env.pop("ANSIBLE_CALLBACKS_ENABLED", None)
    return subprocess.run([str(REPO / "bin" / "main")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1800)


def objects_by_key(L):
    """{("", key): (etag, value)} over every index shard, and the keys found on more than one shard."""
    out, seen, twice = {}, {}, []
    for shard, k, e, v in L.rows():
        if k in seen:
            twice.append((k, seen[k], shard))
        seen[k] = shard
        out[("", k)] = (e, v)
    return out, twice


def recap_changes(stdout):
    return {h: int(c) for h, c in re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", stdout, re.M)}


def test_main_job_reshards_then_evacuates(mlab):
    L = Lab(mlab)
    dom = L.st["domain"]
    evac = "3.stor." + dom
    before, twice = objects_by_key(L)
    assert not twice and len(before) >= SEED
    files_before = {evac: L.files(evac)}

    p = bin_main(mlab)
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-2000:]

    # the reshard: a third index shard with three peers, every object on exactly one shard, none lost
    shards = L.index_shards()
    assert "3.moray." + dom in shards, shards
    peers = mlab.status["shards"]["3.moray." + dom]["peers"]
    assert sorted(q["role"] for q in peers) == ["async", "primary", "sync"]
    report = re.search(r"report: (\S+)\.\{json,txt\}", p.stdout)
    assert report, p.stdout[-4000:]
    rep = json.loads(Path(report.group(1) + ".json").read_text())
    assert rep["state"] == "completed" and rep["window"]["seconds"] > 0, rep["window"]
    after, twice = objects_by_key(L)
    assert not twice, f"keys on two shards after the reshard: {twice[:5]}"
    assert set(before) <= set(after), f"objects lost: {sorted(set(before) - set(after))[:5]}"
    c = psycopg2.connect(L.primaries()["3.moray." + dom])
    try:
        with c.cursor() as cur:
            cur.execute("SELECT count(*) FROM manta WHERE type = 'object'")
            assert cur.fetchone()[0] > 0, "nothing moved to the new shard"
    finally:
        c.close()

    # the evacuation: every copy that was on 3.stor is on a destination with the right MD5, the rules hold,
    # nothing was written on 3.stor; what still references it is what the job skipped, with a reason
    skipped = {r["key"] for r in L.job_rows("evacuate-" + evac) if r["status"] == "skipped"}
    assert L.job("evacuate-" + evac)["state"] == "complete"
    moved = check_evacuated(L, before, after, {evac}, exempt=skipped, files_before=files_before)
    assert moved > SEED // 4, moved
    still = {k[1] for k, (_, v) in after.items() if any(s["manta_storage_id"] == evac for s in v["sharks"])}
    assert still == skipped, (sorted(still - skipped)[:5], sorted(skipped - still)[:5])

    # a second run: both procedures found done, nothing changes anywhere
    p2 = bin_main(mlab)
    assert p2.returncode == 0, p2.stdout[-6000:]
    assert "already completed; nothing to do" in p2.stdout
    changes = recap_changes(p2.stdout)
    assert changes and not any(changes.values()), changes
    assert objects_by_key(L)[0] == after
