"""reshard_ring: transitional/final rings, stamps, archive, staging (fake IMGAPI)."""
import hashlib
import os

import pytest

from ansible_collections.manta.ops.plugins.module_utils import reshard_ring as rring
from ansible_collections.manta.ops.plugins.module_utils.fash import Topology, read_topology

P1, P2, P3 = ("tcp://1.moray.x:2020", "tcp://2.moray.x:2020", "tcp://3.moray.x:2020")


class FakeImgapi:
    def __init__(self):
        self.images = {}
        self.files = {}

    def import_image(self, uuid, manifest, skip_owner_check=False):
        self.images[uuid] = dict(manifest, state="unactivated")

    def add_file(self, uuid, path, compression, sha1=None, size=None):
        data = open(path, "rb").read()
        assert hashlib.sha1(data).hexdigest() == sha1 and len(data) == size
        self.files[uuid] = data

    def activate(self, uuid):
        self.images[uuid]["state"] = "active"

    def delete_image(self, uuid):
        self.images.pop(uuid, None)

    def get_image(self, uuid):
        return self.images[uuid]

    def download_file(self, uuid, dest):
        open(dest, "wb").write(self.files[uuid])
        return hashlib.sha1(self.files[uuid]).hexdigest(), len(self.files[uuid]), None


@pytest.fixture
def rings(tmp_path):
    old = Topology.create([P1, P2], 256)
    moving = old.vnodes_of(P1)[::2]
    trans = old.copy()
    trans.set_data(moving, "ro")
    final = old.copy()
    final.remap(moving, P3)
    return old, trans, final, moving


def test_publish_and_stage_roundtrip(tmp_path, rings):
    old, trans, final, moving = rings
    api = FakeImgapi()
    img, sha1, size, stamp = rring.publish(api, final, str(tmp_path / "work"), "owner-1", "plan-1", "final",
                                           "move some")
    man = api.images[img]
    assert man["state"] == "active" and man["name"] == "manta-hash-ring"
    assert man["tags"] == {"manta_reshard_plan": "plan-1", "manta_reshard_ring": "final",
                           "manta_reshard_transition": "move some"}
    assert man["files"][0]["sha1"] == sha1 and stamp["image_uuid"] == img
    assert not os.listdir(tmp_path / "work")            # scratch removed

    ring = tmp_path / "em" / "leveldb-2021"
    rring.build_ring_dir(old, str(ring), "old-image", "plan-0", "final")
    assert rring.stamp_image(str(ring)) == "old-image"
    assert rring.stage(api, str(ring), img) is True
    assert rring.is_staged(str(ring), img)
    assert rring.stage(api, str(ring), img) is False     # idempotent
    got = read_topology(rring.staged_dir(str(ring), img), snapshot=True)
    assert got == final
    assert set(got.vnodes_of(P3)) == set(moving)


def test_transitional_ring_marks_only_moving_vnodes_ro(tmp_path, rings):
    old, trans, final, moving = rings
    d = tmp_path / "t"
    rring.build_ring_dir(trans, str(d), "t-img", "p", "transitional")
    t = read_topology(str(d), snapshot=True)
    assert sorted(t.data_vnodes()) == sorted(moving)
    assert all(t.data_of(v) == "ro" for v in moving)
    assert t.owners() == old.owners()


def test_stage_refuses_a_wrong_file(tmp_path, rings):
    old, trans, final, moving = rings
    api = FakeImgapi()
    img, *_ = rring.publish(api, final, str(tmp_path / "w"), "o", "p", "final", "x")
    api.images[img]["files"][0]["sha1"] = "0" * 40
    ring = tmp_path / "leveldb"
    rring.build_ring_dir(old, str(ring), "old", "p", "x")
    with pytest.raises(rring.RingSwapError, match="sha1"):
        rring.stage(api, str(ring), img)
    assert not rring.is_staged(str(ring), img)


def test_extract_needs_hash_ring_dir(tmp_path):
    import tarfile
    t = tmp_path / "bad.tgz"
    with tarfile.open(t, "w:gz") as tf:
        f = tmp_path / "x"
        f.write_text("x")
        tf.add(str(f), arcname="other/x")
    with pytest.raises(rring.RingSwapError, match="hash_ring"):
        rring.extract_ring(str(t), str(tmp_path / "out"))


# ---- rolling swaps in batches (manta-reshard: max(1, N/3) at a time) --------------------------------------

@pytest.mark.parametrize("n,size", [(1, 1), (2, 1), (3, 1), (5, 1), (6, 2), (8, 2), (9, 3), (12, 4)])
def test_batch_size_is_a_third(n, size):
    assert rring.batch_size(n) == size


def test_batch_size_given_never_all():
    assert rring.batch_size(4, 2) == 2
    assert rring.batch_size(4, 9) == 3          # one always serves
    assert rring.batch_size(1, 5) == 1 and rring.batch_size(0) == 0


def test_batches_cover_every_process_once_in_order():
    for n in range(1, 14):
        order = [f"em{i}" for i in range(n)]
        b = rring.swap_batches(order)
        assert [x for batch in b for x in batch] == order
        assert all(0 < len(x) <= rring.batch_size(n) for x in b)
        if n >= 2:
            assert len(b) >= 2          # rolling: never every process at once


def test_rolling_wait_for_is_every_earlier_batch():
    order = [f"em{i}" for i in range(7)]          # batches of 2: [0,1] [2,3] [4,5] [6]
    assert rring.rolling_wait_for(order, "em0") == [] == rring.rolling_wait_for(order, "em1")
    assert rring.rolling_wait_for(order, "em3") == ["em0", "em1"]
    assert rring.rolling_wait_for(order, "em6") == order[:6]
    assert rring.rolling_wait_for(order, "em6", batch=1) == order[:6]
    assert rring.rolling_wait_for(["a", "b"], "b") == ["a"]
    with pytest.raises(ValueError):
        rring.rolling_wait_for(order, "em9")


def test_at_most_one_batch_down_at_a_time():
    """Simulate the workers: each swaps (down for one tick) once the processes it waits for serve the new
    ring; at every tick at least N - batch_size processes serve."""
    for n in range(2, 13):
        order = list(range(n))
        serving_new, down, t = set(), set(), 0
        while len(serving_new) < n:
            start = [e for e in order if e not in serving_new and e not in down
                     and set(rring.rolling_wait_for(order, e)) <= serving_new]
            down |= set(start)
            assert n - len(down) >= n - rring.batch_size(n) and n - len(down) >= 1
            serving_new |= down
            down = set()
            t += 1
        assert t == len(rring.swap_batches(order))


def test_serving_ts_prefers_the_process_own_report():
    st = {"serving_since": "2026-11-22T03:18:26.032Z", "start_time": "2026-11-22T03:18:26.002Z"}
    assert rring.serving_ts(st) > rring.serving_ts({"start_time": st["start_time"]})
    assert rring.serving_ts({"start_time": st["start_time"]}, start_time=False) is None
    assert rring.serving_ts(None) is None
