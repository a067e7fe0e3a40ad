"""The multi-buffer MD5 library (module_utils/md5_lanes and its C source) against
hashlib: every instruction set this machine has (capped with MANTA_OPS_MD5_LANES),
block-edge and random lengths, split updates, batches of up to 40 streams of very
different lengths, the buffer types the copy engine hands over; and the build:
where the library is cached, its reuse by a later process, a corrupt or wrong
library in the cache, no compiler, an unwritable cache, racing builds."""
import array
import ctypes
import hashlib
import os
import random
import shutil
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from ansible_collections.manta.ops.plugins.module_utils import md5_lanes
from ansible_collections.manta.ops.plugins.module_utils import md5_lanes_src

MIB = 1024 * 1024
EDGES = [0, 1, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 129]
ENV = ("MANTA_OPS_NATIVE_DIR", "MANTA_OPS_MD5_LANES", "MANTA_OPS_MD5_ENGINE")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for k in ENV:
        monkeypatch.delenv(k, raising=False)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("native")


@pytest.fixture(scope="module")
def engines(cache):
    """{isa: Engine} for every lane count this CPU has, all from one library."""
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MANTA_OPS_NATIVE_DIR", str(cache))
        mp.delenv("MANTA_OPS_MD5_ENGINE", raising=False)
        for cap in (16, 8, 1):
            mp.setenv("MANTA_OPS_MD5_LANES", str(cap))
            eng = md5_lanes.engine()
            assert eng is not None, md5_lanes.last_error
            out.setdefault(eng.isa, eng)
        mp.delenv("MANTA_OPS_MD5_LANES")
        native = md5_lanes.engine()
    assert "scalar" in out and native.isa in out
    assert [e.lanes for e in out.values()] == sorted((e.lanes for e in out.values()), reverse=True)
    return out


def test_rfc1321_suite(engines):
    suite = {b"": "d41d8cd98f00b204e9800998ecf8427e",
             b"a": "0cc175b9c0f1b6a831c399e269772661",
             b"abc": "900150983cd24fb0d6963f7d28e17f72",
             b"message digest": "f96b697d7cb7938d525a2f31aaf161d0",
             b"abcdefghijklmnopqrstuvwxyz": "c3fcd3d76192e4007dfb496cca67e13b",
             b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789": "d174ab98d277d9f5a5611c2c9f419d9f",
             b"1234567890" * 8: "57edf4a22be3c955ac49da2e2107b67a"}
    for isa, eng in engines.items():
        for msg, hexd in suite.items():
            assert md5_lanes.Md5(eng, msg).hexdigest() == hexd, (isa, msg)
        hs = [md5_lanes.Md5(eng) for _ in suite]
        md5_lanes.update_many(eng, list(zip(hs, suite)))
        assert [h.hexdigest() for h in hs] == list(suite.values()), isa


def cpu_flags():
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def test_every_isa_of_this_cpu_is_tested(engines):
    assert {isa: e.lanes for isa, e in engines.items()} == \
        {isa: {"avx512": 16, "avx2": 8, "scalar": 1}[isa] for isa in engines}
    if os.uname().machine == "x86_64":
        flags = cpu_flags()
        want = ["scalar"] + ["avx2"] * ("avx2" in flags) + ["avx512"] * ("avx512f" in flags)
        assert sorted(engines) == sorted(want)


def test_block_edges(engines):
    rng = random.Random(1)
    msgs = [rng.randbytes(n) for n in EDGES]
    for isa, eng in engines.items():
        for m in msgs:
            assert md5_lanes.Md5(eng, m).digest() == hashlib.md5(m).digest(), (isa, len(m))
        hs = [md5_lanes.Md5(eng) for _ in msgs]
        md5_lanes.update_many(eng, [(h, bytearray(m)) for h, m in zip(hs, msgs)])
        assert [h.digest() for h in hs] == [hashlib.md5(m).digest() for m in msgs], isa


def test_random_lengths_up_to_3mib(engines):
    rng = random.Random(2)
    lens = [3 * MIB, 3 * MIB - 1, rng.randrange(MIB, 3 * MIB), rng.randrange(64 * 1024, MIB)] + \
        [rng.randrange(0, 200_000) for _ in range(12)]
    msgs = [rng.randbytes(n) for n in lens]
    want = [hashlib.md5(m).hexdigest() for m in msgs]
    for isa, eng in engines.items():
        hs = [md5_lanes.Md5(eng) for _ in msgs]
        md5_lanes.update_many(eng, [(h, memoryview(bytearray(m))) for h, m in zip(hs, msgs)])
        assert [h.hexdigest() for h in hs] == want, isa
        assert md5_lanes.Md5(eng, msgs[0]).hexdigest() == want[0], isa


def test_update_split_at_random_points(engines):
    rng = random.Random(3)
    for isa, eng in engines.items():
        for _ in range(20):
            m = rng.randbytes(rng.randrange(0, 5000))
            cuts = sorted(rng.randrange(0, len(m) + 1) for _ in range(rng.randrange(0, 8)))
            h = md5_lanes.Md5(eng)
            for a, b in zip([0] + cuts, cuts + [len(m)]):
                h.update(m[a:b])
            assert h.hexdigest() == hashlib.md5(m).hexdigest(), (isa, len(m), cuts)


def test_digest_does_not_end_the_stream(engines):
    eng = engines["scalar"]
    h = md5_lanes.Md5(eng, b"x" * 100)
    assert h.hexdigest() == hashlib.md5(b"x" * 100).hexdigest()
    c = h.copy()
    h.update(b"y" * 30)
    assert h.hexdigest() == hashlib.md5(b"x" * 100 + b"y" * 30).hexdigest()
    assert c.hexdigest() == hashlib.md5(b"x" * 100).hexdigest()
    assert (h.name, h.digest_size, h.block_size) == ("md5", 16, 64)


def as_kind(kind, data):
    """``data`` as one of the buffer types a caller may hand over."""
    if kind == "bytes":
        return data
    if kind == "bytearray":
        return bytearray(data)
    if kind == "mv_slice":  # a window of a larger receive buffer, like the copy engine's
        buf = bytearray(len(data) + 37)
        buf[13:13 + len(data)] = data
        return memoryview(buf)[13:13 + len(data)]
    if kind == "mv_bytes":  # read-only: hashed from a copy
        return memoryview(b"!" + data)[1:]
    if kind == "array":  # not bytes-formatted: cast to bytes
        pad = (-len(data)) % 4
        return memoryview(array.array("I", data + b"\0" * pad)).cast("B")[:len(data)] if pad else \
            array.array("I", data)
    raise AssertionError(kind)


KINDS = ["bytes", "bytearray", "mv_slice", "mv_bytes", "array"]


def pieces(rng, m):
    """``m`` cut into chunks of assorted sizes, empty ones included."""
    out, i = [], 0
    while True:
        k = rng.choice([0, 1, 50, 64, 100, 4096, 70_000])
        out.append(m[i:i + k])
        i += k
        if i >= len(m):
            return out


def test_update_many_batches_of_very_different_lengths(engines):
    """Streams fed in rounds of update_many: 1..40 per batch, lengths 0 to 300 KiB
    apart, more streams than lanes, every buffer type."""
    rng = random.Random(4)
    for isa, eng in engines.items():
        for n in (1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 33, 40):
            sizes = [rng.choice([0, 0, 1, 63, 64, 65, rng.randrange(0, 4096), rng.randrange(0, 300_000)])
                     for _ in range(n)]
            msgs = [rng.randbytes(s) for s in sizes]
            chunks = [pieces(rng, m) for m in msgs]
            hs = [md5_lanes.Md5(eng) for _ in msgs]
            for r in range(max(len(c) for c in chunks)):
                md5_lanes.update_many(eng, [(h, as_kind(rng.choice(KINDS), c[r]))
                                            for h, c in zip(hs, chunks) if r < len(c)])
            assert [h.hexdigest() for h in hs] == [hashlib.md5(m).hexdigest() for m in msgs], (isa, n, sizes)


def test_update_many_same_stream_twice_in_a_batch(engines):
    eng = engines[max(engines, key=lambda i: engines[i].lanes)]
    a, b = md5_lanes.Md5(eng), md5_lanes.Md5(eng)
    parts = [os.urandom(n) for n in (100, 5000, 3, 64, 7000)]
    md5_lanes.update_many(eng, [(a, parts[0]), (b, parts[1]), (a, parts[1]), (a, parts[2]),
                                (b, parts[3]), (a, parts[4])])
    assert a.hexdigest() == hashlib.md5(parts[0] + parts[1] + parts[2] + parts[4]).hexdigest()
    assert b.hexdigest() == hashlib.md5(parts[1] + parts[3]).hexdigest()


def test_update_many_without_the_library():
    hs = [hashlib.md5() for _ in range(3)]
    md5_lanes.update_many(None, [(h, b"abc" * i) for i, h in enumerate(hs)])
    assert [h.hexdigest() for h in hs] == [hashlib.md5(b"abc" * i).hexdigest() for i in range(3)]


def test_compress_many_low_level(engines):
    for isa, eng in engines.items():
        data = [os.urandom(64 * k + 10) for k in (0, 1, 5, 40, 3, 0, 17)]
        states = [md5_lanes.State() for _ in data]
        ref = [md5_lanes.State() for _ in data]
        used = eng.compress_many(states, [bytearray(d) for d in data], [len(d) // 64 for d in data])
        assert used == eng.lanes
        for r, d in zip(ref, data):
            eng.compress(r, d, len(d) // 64)
        assert [list(s.h) for s in states] == [list(r.h) for r in ref], isa
        assert [s.length for s in states] == [64 * (len(d) // 64) for d in data]
        assert all(s.tail == b"" for s in states)
        with pytest.raises(ValueError):
            eng.compress_many([md5_lanes.State()], [bytearray(100)], [2])
        with pytest.raises(ValueError):
            s = md5_lanes.State()
            eng.compress_many([s, s], [bytes(64), bytes(64)], [1, 1])
        with pytest.raises(ValueError):
            eng.compress_many([md5_lanes.State()], [bytes(64)], [1, 1])


SCHEDULES = {  # blocks per job: how jobs share the lanes, and the scalar pairs at the end
    "one": [5], "two equal": [5, 5], "two apart": [300, 1], "apart the other way": [1, 300],
    "empty ones": [0, 0, 7, 0], "three": [40, 2, 39], "lanes + 1": [9] * 17,
    "lanes and a long one": [3] * 16 + [500], "a long one first": [500] + [3] * 30,
    "two long at the end": [2] * 20 + [200, 201], "many": list(range(70, 0, -1)),
}


def test_schedules_against_one_stream_at_a_time(engines):
    """Lane refills, idle lanes, the scalar pairs: each job's state as if it had been
    hashed alone (md5mb_compress_scalar, one call per job)."""
    rng = random.Random(5)
    for name, blocks in SCHEDULES.items():
        data = [rng.randbytes(64 * k) for k in blocks]
        alone = [md5_lanes.State() for _ in data]
        for st, d, k in zip(alone, data, blocks):
            engines["scalar"].compress(st, d, k)
        for isa, eng in engines.items():
            states = [md5_lanes.State() for _ in data]
            assert eng.compress_many(states, data, blocks) == eng.lanes
            assert [list(s.h) for s in states] == [list(s.h) for s in alone], (isa, name)


def test_writable_buffers_are_hashed_in_place(engines, monkeypatch):
    """No copy of a bytearray: while the library holds it, it cannot be resized."""
    eng = engines["scalar"]
    buf = bytearray(64)
    seen = []
    real = eng._many

    def spy(*args):
        with pytest.raises(BufferError):
            buf.extend(b"x")
        seen.append(args[-1])
        return real(*args)

    monkeypatch.setattr(eng, "_many", spy)
    h = md5_lanes.Md5(eng)
    md5_lanes.update_many(eng, [(h, buf)])
    assert seen == [1] and h.hexdigest() == hashlib.md5(bytes(64)).hexdigest()
    buf.extend(b"x")  # released after the call


def test_the_gil_is_released_during_a_batch(engines, monkeypatch):
    """Another thread runs Python while the library hashes. (A long switch interval:
    the only way the other thread gets the GIL during the call is that the call
    released it; with ctypes.PyDLL the count stays 0.)"""
    eng = engines[max(engines, key=lambda i: engines[i].lanes)]
    bufs = [bytearray(4 * MIB) for _ in range(16)]
    hs = [md5_lanes.Md5(eng) for _ in bufs]
    ticks, during, stop = [0], [], threading.Event()
    real = eng._many

    def counted(*args):
        before = ticks[0]
        try:
            return real(*args)
        finally:
            during.append(ticks[0] - before)

    def spin():
        while not stop.is_set():
            ticks[0] += 1

    monkeypatch.setattr(eng, "_many", counted)
    old = sys.getswitchinterval()
    sys.setswitchinterval(0.05)
    t = threading.Thread(target=spin)
    t.start()
    try:
        while not ticks[0]:
            time.sleep(0.001)
        md5_lanes.update_many(eng, list(zip(hs, bufs)))
    finally:
        stop.set()
        t.join()
        sys.setswitchinterval(old)
    assert len(during) == 1 and during[0] > 0
    assert {h.hexdigest() for h in hs} == {hashlib.md5(bytes(4 * MIB)).hexdigest()}


# ---- the build ---------------------------------------------------------------------------


def run_py(code, env):
    full = {k: v for k, v in os.environ.items() if k not in ENV}
    full.update(env)
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full, capture_output=True,
                       text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


PROBE = """
    from ansible_collections.manta.ops.plugins.module_utils import md5_lanes as L
    e = L.engine()
    print(e.path + " " + e.isa if e else "None " + str(L.last_error))
"""


def test_forced_hashlib(monkeypatch, tmp_path):
    monkeypatch.setenv("MANTA_OPS_NATIVE_DIR", str(tmp_path))
    monkeypatch.setenv("MANTA_OPS_MD5_ENGINE", "hashlib")
    assert md5_lanes.engine() is None
    assert list(tmp_path.iterdir()) == []  # not even built


def test_built_into_the_cache_dir_and_reused_by_a_later_process(tmp_path):
    env = {"MANTA_OPS_NATIVE_DIR": str(tmp_path / "native")}
    path, _isa = run_py(PROBE, env).split()
    assert os.path.dirname(path) == str(tmp_path / "native")
    assert os.path.basename(path) == md5_lanes.library_name()
    assert md5_lanes.library_name().startswith("md5mb-") and len(md5_lanes.library_name()) == 25
    assert os.listdir(tmp_path / "native") == [md5_lanes.library_name()]  # no temp files left
    mtime = os.stat(path).st_mtime_ns
    # the second process has no compiler at all: it can only have loaded the cached library
    nocc = tmp_path / "empty-bin"
    nocc.mkdir()
    again, _ = run_py(PROBE, {**env, "PATH": str(nocc)}).split()
    assert again == path and os.stat(path).st_mtime_ns == mtime


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert md5_lanes.cache_dir() == str(tmp_path / "xdg" / "manta-ops")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert md5_lanes.cache_dir() == str(tmp_path / "home" / ".cache" / "manta-ops")
    monkeypatch.setenv("MANTA_OPS_NATIVE_DIR", str(tmp_path / "n"))
    assert md5_lanes.cache_dir() == str(tmp_path / "n")


@pytest.mark.parametrize("damage", ["garbage", "empty", "half", "nine_tenths"])
def test_a_corrupt_library_in_the_cache_is_rebuilt(tmp_path, engines, damage):
    """dlopen() of the half library dies of SIGBUS, and it loads 9/10 of one: a cut
    library is recognised before it is loaded (in a subprocess here, to be safe)."""
    good = open(next(iter(engines.values())).path, "rb").read()
    final = tmp_path / md5_lanes.library_name()
    final.write_bytes({"garbage": os.urandom(20000), "empty": b"", "half": good[:len(good) // 2],
                       "nine_tenths": good[:len(good) * 9 // 10]}[damage])
    assert not md5_lanes._looks_complete(str(final)) or damage in ("garbage", "empty")
    path, isa = run_py(PROBE, {"MANTA_OPS_NATIVE_DIR": str(tmp_path)}).split()
    assert path == str(final) and isa in engines
    assert final.read_bytes()[:4] == b"\x7fELF" and md5_lanes._looks_complete(str(final))
    assert final.stat().st_size > len(good) // 2


def test_a_wrong_library_in_the_cache_fails_the_self_test_and_is_rebuilt(tmp_path):
    """A loadable library with the right symbols and wrong answers (loaded first, in
    the same process, under the final name) is replaced by a good build."""
    wrong = tmp_path / "wrong.c"
    wrong.write_text(textwrap.dedent("""
        #include <stdint.h>
        void md5mb_compress_scalar(uint32_t *s, const uint8_t *p, uint64_t n) { (void)p; s[0] += (uint32_t)n; }
        int md5mb_lanes(void) { return 1; }
        int md5mb_compress_lanes(int l, uint32_t *s, const uint8_t *const *p, const uint64_t *n, int k)
        { (void)l; for (int j = 0; j < k; j++) md5mb_compress_scalar(s + 4 * j, p[j], n[j]); return 1; }
    """))
    final = tmp_path / md5_lanes.library_name()
    subprocess.run([shutil.which("cc") or "gcc", "-O2", "-shared", "-fPIC", "-o", str(final), str(wrong)],
                   check=True, timeout=60)
    out = run_py("""
        import hashlib, os
        from ansible_collections.manta.ops.plugins.module_utils import md5_lanes as L
        assert L._load(os.path.join(L.cache_dir(), L.library_name()), 0) is None
        e = L.engine()
        print(e.isa, L.Md5(e, b"abc").hexdigest() == hashlib.md5(b"abc").hexdigest())
    """, {"MANTA_OPS_NATIVE_DIR": str(tmp_path)})
    isa, ok = out.split()
    assert ok == "True" and isa in ("avx512", "avx2", "scalar")
    assert hasattr(ctypes.CDLL(str(final)), "md5mb_compress")  # the real library now


def test_no_compiler_means_hashlib(monkeypatch, tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setenv("MANTA_OPS_NATIVE_DIR", str(tmp_path / "native"))
    assert md5_lanes.engine() is None
    assert "no C compiler" in md5_lanes.last_error
    with pytest.raises(RuntimeError):
        md5_lanes.Md5()


def test_unwritable_cache_means_hashlib(monkeypatch, tmp_path):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("MANTA_OPS_NATIVE_DIR", str(tmp_path / "a-file" / "native"))  # even root fails
    assert md5_lanes.engine() is None
    assert md5_lanes.last_error.startswith(("NotADirectoryError", "FileExistsError", "OSError"))


def test_compiler_errors_mean_hashlib(monkeypatch, tmp_path):
    """A 'compiler' that fails, and one that hangs past the timeout."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    cc = bin_ / "cc"
    cc.write_text("#!/bin/sh\necho 'cc: internal error' >&2\nexit 4\n")
    cc.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_))
    monkeypatch.setenv("MANTA_OPS_NATIVE_DIR", str(tmp_path / "n1"))
    assert md5_lanes.engine() is None
    assert "internal error" in md5_lanes.last_error
    cc.write_text("#!/bin/sh\nexec /bin/sleep 30\n")
    monkeypatch.setattr(md5_lanes, "_COMPILE_TIMEOUT", 0.5)
    monkeypatch.setenv("MANTA_OPS_NATIVE_DIR", str(tmp_path / "n2"))
    assert md5_lanes.engine() is None
    assert "TimeoutExpired" in md5_lanes.last_error
    assert os.listdir(tmp_path / "n2") == []  # temporary files removed


def test_racing_builds(tmp_path):
    """Processes that build at the same time all get a working library, and one file is left."""
    env = {k: v for k, v in os.environ.items() if k not in ENV}
    env["MANTA_OPS_NATIVE_DIR"] = str(tmp_path)
    code = textwrap.dedent(PROBE)
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert {o[0] for o in outs} == {str(tmp_path / md5_lanes.library_name())}
    assert os.listdir(tmp_path) == [md5_lanes.library_name()]


def test_scalar_only_build_for_other_architectures(tmp_path):
    """What a non-x86 host compiles (no SIMD at all) is right too."""
    src = tmp_path / "md5mb.c"
    src.write_text(md5_lanes_src.SOURCE)
    so = tmp_path / "md5mb-scalar.so"
    subprocess.run([shutil.which("cc") or "gcc", "-O3", "-shared", "-fPIC", "-DMD5MB_NO_SIMD", "-o", str(so),
                    str(src)], check=True, timeout=60)
    eng = md5_lanes.Engine(ctypes.CDLL(str(so)), str(so))
    assert (eng.lanes, eng.isa) == (1, "scalar")
    assert md5_lanes._self_test(eng)


def test_the_source_compiles_cleanly(tmp_path):
    src = tmp_path / "md5mb.c"
    src.write_text(md5_lanes_src.SOURCE)
    r = subprocess.run([shutil.which("cc") or "gcc", "-O3", "-shared", "-fPIC", "-Wall", "-Wextra", "-o",
                        str(tmp_path / "x.so"), str(src)], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0 and r.stderr == "", r.stderr
