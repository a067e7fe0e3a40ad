"""The copy engine's MD5 pipeline (module_utils/evacuate_hash): chunks of many
transfers hashed together by one thread, in order per transfer, with the buffers
handed back only once hashed. Against hashlib, with the real native library."""
import hashlib
import os
import random
import threading

import pytest

from ansible_collections.manta.ops.plugins.module_utils import evacuate_hash as EH
from ansible_collections.manta.ops.plugins.module_utils import md5_lanes


@pytest.fixture(scope="module")
def engine():
    eng = md5_lanes.engine()
    assert eng is not None, f"the native MD5 library did not build: {md5_lanes.last_error}"
    return eng


def stream(hz, ring, data, rnd):
    """What a fetch thread does: receive pieces into the ring, submit, move on."""
    h = hz.new()
    last = None
    pos = 0
    while pos < len(data):
        slot, piece = ring.take(hz)
        k = min(len(piece), len(data) - pos, rnd.choice([1, 63, 64, 1000, 65536, len(piece)]))
        piece[:k] = data[pos:pos + k]
        last = hz.submit(h, piece[:k])
        ring.hold(slot, last)
        pos += k
    if last is not None:
        hz.wait(last)
    return h.digest()


def test_many_threads_many_objects_match_hashlib(engine):
    hz = EH.LaneHasher(engine)
    errors, results = [], []

    def worker(seed):
        rnd = random.Random(seed)
        ring = EH.PieceRing(4, 64 * 1024)
        try:
            for _ in range(4):
                data = os.urandom(rnd.choice([0, 1, 55, 64, 4096, 300_000, 1 << 20]))
                results.append((stream(hz, ring, data, rnd), hashlib.md5(data).digest()))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    hz.close()
    assert not errors, errors
    assert len(results) == 48
    assert all(got == want for got, want in results)
    st = hz.stats()
    assert st["engine"] == f"md5_lanes/{engine.isa}" and st["batches"] > 0
    # several transfers shared batches, or the lanes bought nothing
    assert st["chunks_per_batch"] > 1, st


def test_chunks_of_one_transfer_queued_together_are_hashed_in_order(engine):
    """Submitted back to back without waiting: the hasher takes one chunk of a transfer
    per batch, so the order holds."""
    hz = EH.LaneHasher(engine)
    parts = [os.urandom(n) for n in (100, 64, 70_000, 3, 1 << 18, 0, 129)]
    h = hz.new()
    tickets = [hz.submit(h, memoryview(bytearray(p))) for p in parts]
    for t in tickets:
        hz.wait(t)
    hz.close()
    assert h.digest() == hashlib.md5(b"".join(parts)).digest()


def test_a_failing_library_call_reaches_the_waiter_unless_quiet(engine, monkeypatch):
    hz = EH.LaneHasher(engine)

    def boom(eng, pairs):
        raise OSError("lanes broke")

    monkeypatch.setattr(md5_lanes, "update_many", boom)
    t = hz.submit(hz.new(), b"x" * 1000)
    with pytest.raises(OSError, match="lanes broke"):
        hz.wait(t)
    hz.wait(t, quiet=True)  # the ring only needs its slot back
    hz.close()


def test_close_hashes_what_is_queued_then_refuses(engine):
    hz = EH.LaneHasher(engine)
    h = hz.new()
    data = os.urandom(5 << 20)
    t = hz.submit(h, data)
    hz.close()
    assert t.done and h.digest() == hashlib.md5(data).digest()
    with pytest.raises(RuntimeError, match="closed"):
        hz.submit(h, b"more")


def test_ring_hands_a_slot_back_only_once_its_chunk_is_hashed(engine):
    hz = EH.LaneHasher(engine)
    ring = EH.PieceRing(2, 1024)
    gate = threading.Event()
    real = md5_lanes.update_many

    def slow(eng, pairs):
        gate.wait(10)
        real(eng, pairs)

    md5_lanes.update_many = slow
    try:
        h = hz.new()
        s0, p0 = ring.take(hz)
        p0[:] = b"a" * 1024
        ring.hold(s0, hz.submit(h, p0))
        s1, dummy = ring.take(hz)
        assert s1 != s0
        got = []
        th = threading.Thread(target=lambda: got.append(ring.take(hz)))
        th.start()
        th.join(0.3)
        assert th.is_alive() and not got, "slot 0 came back while its chunk was unhashed"
        gate.set()
        th.join(10)
        assert got and got[0][0] == s0
    finally:
        md5_lanes.update_many = real
        gate.set()
        hz.close()
    assert h.digest() == hashlib.md5(b"a" * 1024).digest()


def test_hasher_falls_back_to_hashlib_when_switched_off(monkeypatch):
    monkeypatch.setenv("MANTA_OPS_MD5_ENGINE", "hashlib")
    hz = EH.hasher()
    assert isinstance(hz, EH.PlainHasher) and hz.stats() == {"engine": "hashlib"}
    h = hz.new()
    ring = EH.PieceRing(2, 4096)
    assert stream(hz, ring, b"abc" * 5000, random.Random(1)) == hashlib.md5(b"abc" * 5000).digest()
    monkeypatch.delenv("MANTA_OPS_MD5_ENGINE")
    hz = EH.hasher()
    eng = md5_lanes.engine()
    assert isinstance(hz, EH.LaneHasher) == (eng is not None and eng.lanes >= 2)
    hz.close()
    assert h.digest() == hashlib.md5(b"").digest()
