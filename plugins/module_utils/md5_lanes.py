# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Multi-buffer MD5: many independent streams hashed together in SIMD lanes.

The MD5 of one stream is a chain of dependent steps no core can speed up, but the
streams of concurrent transfers are independent: the native library built from
:mod:`md5_lanes_src` hashes one per 32-bit lane, 16 at a time with AVX-512 and 8 with
AVX2 (two at a time, interleaved, in scalar C elsewhere and for the last one or two).

:func:`engine` compiles the library with the host's C compiler on first use, caches
it (``$MANTA_OPS_NATIVE_DIR``, else ``$XDG_CACHE_HOME/manta-ops``, else
``~/.cache/manta-ops``), loads it with ctypes and checks it against hashlib. It
returns ``None`` (the caller then uses hashlib) when anything fails, or when
``MANTA_OPS_MD5_ENGINE=hashlib``. ``MANTA_OPS_MD5_LANES=1|8|16`` caps the lanes,
so that each instruction set the machine has can be tested and measured.

:class:`Md5` is a hashlib-like object; :func:`update_many` feeds a batch of
``(Md5, buffer)`` pairs with one call into the library, during which the GIL is
released. Writable buffers (bytearray, memoryviews of one) are hashed in place;
``bytes`` too; other read-only buffers are copied first.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import struct
import subprocess
import tempfile
import threading

from ansible_collections.manta.ops.plugins.module_utils import md5_lanes_src

BLOCK = 64
_IV = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)
_ISA = {16: "avx512", 8: "avx2", 1: "scalar"}
_COMPILE_TIMEOUT = 60

_lock = threading.Lock()
_engines = {}          # (cache dir, lanes cap) -> Engine or None
last_error = None      # why the last engine() that failed did, for diagnostics


# ---- the state of one stream ------------------------------------------------------------


class State:
    """One stream: the four chaining values (a ctypes array the library updates in
    place), the bytes absorbed so far (hashed blocks + tail), and the tail: the
    bytes of an incomplete last block, fewer than 64."""

    __slots__ = ("h", "length", "tail")

    def __init__(self):
        self.h = (ctypes.c_uint32 * 4)(*_IV)
        self.length = 0
        self.tail = b""

    def copy(self):
        other = State()
        ctypes.memmove(other.h, self.h, 16)
        other.length, other.tail = self.length, self.tail
        return other


def _view(data):
    """``data`` as a flat memoryview of unsigned bytes (a copy only if it is not contiguous)."""
    mv = data if isinstance(data, memoryview) else memoryview(data)
    if mv.ndim == 1 and mv.format == "B":
        return mv
    return mv.cast("B") if mv.c_contiguous else memoryview(mv.tobytes())


def _pin(data, mv):
    """(address of ``mv``'s first byte, the object to keep alive meanwhile).

    No copy for ``bytes`` and writable buffers; ``from_buffer`` also stops a bytearray
    from being resized while the library reads it."""
    if isinstance(data, bytes):
        return ctypes.cast(data, ctypes.c_void_p).value, data
    if not mv.readonly:
        pin = ctypes.c_char.from_buffer(mv)
        return ctypes.addressof(pin), pin
    copy = mv.tobytes()
    return ctypes.cast(copy, ctypes.c_void_p).value, copy


# ---- the library --------------------------------------------------------------------------


class Engine:
    """The loaded library. ``lanes`` is 16, 8 or 1; ``isa`` "avx512", "avx2" or "scalar"."""

    def __init__(self, lib, path, lanes_cap=0):
        self.path = path
        self._scalar = lib.md5mb_compress_scalar
        self._scalar.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64]
        self._scalar.restype = None
        self._many = lib.md5mb_compress_lanes
        self._many.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                               ctypes.c_int]
        self._many.restype = ctypes.c_int
        # with no jobs the library just says how many lanes it would use
        self.lanes = self._many(lanes_cap, None, None, None, 0)
        self.isa = _ISA[self.lanes]

    def __repr__(self):
        return f"<md5_lanes.Engine {self.isa} lanes={self.lanes} {self.path}>"

    def md5(self, data=b""):
        return Md5(self, data)

    def compress_many(self, states, bufs, nblocks):
        """Hash ``nblocks[j]`` whole blocks from the start of ``bufs[j]`` into ``states[j]``
        (advancing its ``length``; its tail is left alone), for every j, in one call.
        Returns the number of lanes used."""
        if not len(states) == len(bufs) == len(nblocks):
            raise ValueError("states, bufs and nblocks differ in length")
        if len({id(s) for s in states}) != len(states):
            raise ValueError("a state appears twice: its jobs would not be chained")
        addrs, pins = [], []
        for buf, k in zip(bufs, nblocks):
            mv = _view(buf)
            if k < 0 or mv.nbytes < BLOCK * k:
                raise ValueError(f"{k} blocks asked of a buffer of {mv.nbytes} bytes")
            addr, pin = _pin(buf, mv) if k else (0, None)
            addrs.append(addr)
            pins.append(pin)
        return self._compress_at(states, addrs, nblocks)

    def _compress_at(self, states, addrs, nblocks):
        """compress_many on raw addresses, which the caller keeps valid, and distinct states."""
        n = len(states)
        st = (ctypes.c_uint32 * (4 * n))()
        base = ctypes.addressof(st)
        for j, s in enumerate(states):
            ctypes.memmove(base + 16 * j, s.h, 16)
        used = self._many(self.lanes, st, (ctypes.c_void_p * n)(*addrs),
                          (ctypes.c_uint64 * n)(*nblocks), n)
        for j, s in enumerate(states):
            ctypes.memmove(s.h, base + 16 * j, 16)
            s.length += BLOCK * nblocks[j]
        return used

    def compress(self, state, addr, nblocks):
        """Scalar: ``nblocks`` blocks at address ``addr`` (or a bytes object) into ``state``."""
        if nblocks:
            self._scalar(state.h, addr, nblocks)
            state.length += BLOCK * nblocks


# ---- hashlib-like objects -----------------------------------------------------------------


class Md5:
    """MD5 of one stream, with hashlib's interface; its blocks are hashed by the scalar
    C code here, or in SIMD lanes with other streams by :func:`update_many`."""

    name = "md5"
    digest_size = 16
    block_size = BLOCK
    __slots__ = ("engine", "state")

    def __init__(self, eng=None, data=b""):
        self.engine = eng or engine()
        if self.engine is None:
            raise RuntimeError(f"the native MD5 library is not available: {last_error}")
        self.state = State()
        if data:
            self.update(data)

    def update(self, data):
        mv = _view(data)
        off = _fill_tail(self.engine, self.state, mv)
        k = (mv.nbytes - off) // BLOCK
        if k:
            addr, _pin_ref = _pin(data, mv)
            self.engine.compress(self.state, addr + off, k)
        _keep_tail(self.state, mv, off + BLOCK * k)

    def copy(self):
        other = Md5.__new__(Md5)
        other.engine, other.state = self.engine, self.state.copy()
        return other

    def digest(self):
        """The MD5 of everything so far; the object can still be updated."""
        st = self.state.copy()
        n = len(st.tail)
        # RFC 1321 3.1-3.2: 0x80, zeros up to 56 mod 64, the length in bits (mod 2^64)
        last = st.tail + b"\x80" + bytes((55 - n) % BLOCK) + \
            struct.pack("<Q", (8 * st.length) & 0xFFFFFFFFFFFFFFFF)
        self.engine._scalar(st.h, last, len(last) // BLOCK)
        return struct.pack("<4I", *st.h)

    def hexdigest(self):
        return self.digest().hex()


def _fill_tail(eng, st, mv):
    """Complete ``st``'s pending tail from the head of ``mv`` and hash it (scalar) once
    it is a block; returns how many bytes of ``mv`` that took."""
    if not st.tail:
        return 0
    need = BLOCK - len(st.tail)
    if mv.nbytes < need:
        st.tail += mv.tobytes()
        st.length += mv.nbytes
        return mv.nbytes
    eng._scalar(st.h, st.tail + mv[:need].tobytes(), 1)
    st.tail = b""
    st.length += need
    return need


def _keep_tail(st, mv, end):
    """The bytes of ``mv`` after ``end`` (fewer than a block) become ``st``'s tail."""
    if end < mv.nbytes:
        rest = mv[end:].tobytes()
        st.tail += rest
        st.length += len(rest)


def update_many(eng, pairs):
    """``h.update(buf)`` for every ``(h, buf)`` in ``pairs``, the whole blocks of all of
    them in one library call. ``eng`` None (no library) or ``h`` not an :class:`Md5`
    (say, a hashlib object): plain ``h.update``. An ``h`` that appears again is
    updated in order, in a later call."""
    batch, seen = [], set()
    for h, buf in pairs:
        if eng is None or not isinstance(h, Md5):
            h.update(buf)
            continue
        if id(h) in seen:
            _update_batch(eng, batch)
            batch, seen = [], set()
        batch.append((h, buf))
        seen.add(id(h))
    if batch:
        _update_batch(eng, batch)


def _update_batch(eng, pairs):
    states, addrs, nblocks, pins, rests = [], [], [], [], []
    for h, buf in pairs:
        st, mv = h.state, _view(buf)
        off = _fill_tail(eng, st, mv)
        k = (mv.nbytes - off) // BLOCK
        if k:
            addr, pin = _pin(buf, mv)
            states.append(st)
            addrs.append(addr + off)
            nblocks.append(k)
            pins.append(pin)
        rests.append((st, mv, off + BLOCK * k))
    if states:
        eng._compress_at(states, addrs, nblocks)
    for st, mv, end in rests:
        _keep_tail(st, mv, end)


# ---- building and loading -----------------------------------------------------------------


def cache_dir():
    d = os.environ.get("MANTA_OPS_NATIVE_DIR")
    if d:
        return d
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "manta-ops")


def library_name():
    """Named after what it is built from, so a changed source never loads a stale build."""
    key = hashlib.sha256((md5_lanes_src.SOURCE + "\0" + os.uname().machine).encode()).hexdigest()
    return f"md5mb-{key[:16]}.so"


def engine():
    """The :class:`Engine` of this process (built on first use), or None: no compiler,
    an unwritable cache, a failed self-test, or ``MANTA_OPS_MD5_ENGINE=hashlib``."""
    if os.environ.get("MANTA_OPS_MD5_ENGINE", "").strip().lower() == "hashlib":
        return None
    key = (cache_dir(), _lanes_cap())
    try:
        return _engines[key]
    except KeyError:
        pass
    with _lock:
        if key not in _engines:
            _engines[key] = _open(*key)
        return _engines[key]


def _lanes_cap():
    try:
        return max(0, int(os.environ.get("MANTA_OPS_MD5_LANES") or 0))
    except ValueError:
        return 0


def _open(directory, lanes_cap):
    global last_error
    try:
        final = os.path.join(directory, library_name())
        eng = _load(final, lanes_cap) if _looks_complete(final) else None
        if eng is None:
            eng = _build(directory, final, lanes_cap)
        last_error = None
        return eng
    except Exception as exc:  # noqa: BLE001 - any failure means: use hashlib
        last_error = f"{type(exc).__name__}: {exc}"[:2000]
        return None


def _build(directory, final, lanes_cap):
    """Compile to a temporary name, load and check that, then rename it into place
    (atomic: racing processes each install a complete library)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise OSError("no C compiler (cc, gcc) on PATH")
    os.makedirs(directory, exist_ok=True)
    fd, src = tempfile.mkstemp(prefix=".md5mb-", suffix=".c", dir=directory)
    so = src[:-2] + ".so"
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(md5_lanes_src.SOURCE)
        # no AnsibleModule here (the copy engine calls engine() from its threads) to run_command with
        r = subprocess.run([cc, "-O3", "-shared", "-fPIC", "-o", so, src],  # pylint: disable=ansible-bad-function
                           capture_output=True, text=True, timeout=_COMPILE_TIMEOUT, check=False)
        if r.returncode != 0:
            raise OSError(f"{cc} failed ({r.returncode}): {r.stderr.strip()[-1500:]}")
        # loaded under its own unique name: dlopen() of ``final`` could hand back the
        # handle of a bad library loaded from there earlier in this process
        eng = _load(so, lanes_cap)
        if eng is None:
            raise RuntimeError("the library just built fails its self-test")
        os.replace(so, final)
        eng.path = final
        return eng
    finally:
        for p in (src, so):
            try:
                os.unlink(p)
            except OSError:
                pass


def _looks_complete(path):
    """False for a missing file, and for an ELF file cut short (its section headers,
    at the end, missing): dlopen() of a truncated library can crash the process."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return False
    if head[:4] != b"\x7fELF":
        return True  # not ELF: dlopen() will refuse it, or it is another format
    if len(head) < 52:
        return False
    end = "<" if head[5] == 1 else ">"
    if head[4] == 2:  # 64-bit
        if len(head) < 64:
            return False
        shoff, = struct.unpack_from(end + "Q", head, 0x28)
        shentsize, shnum = struct.unpack_from(end + "HH", head, 0x3A)
    else:
        shoff, = struct.unpack_from(end + "I", head, 0x20)
        shentsize, shnum = struct.unpack_from(end + "HH", head, 0x2E)
    return 0 < shoff and shoff + shentsize * shnum <= size


def _load(path, lanes_cap):
    """The Engine of the library at ``path`` if it loads and passes the self-test, else None."""
    try:
        eng = Engine(ctypes.CDLL(path), path, lanes_cap)
        return eng if _self_test(eng) else None
    except Exception:  # noqa: BLE001 - not a library, not this one, or wrong: rebuild it
        return None


def _self_test(eng):
    """Every code path against hashlib: the lanes (more jobs than lanes, of lengths
    that end together and apart, one empty), the scalar code, tails and padding."""
    data = bytes(range(251)) * 40
    msgs = [data[7 * j:7 * j + n] for j, n in enumerate(
        [0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 1000, 4096, 4097, 9000, 3, 640, 640, 200,
         5000, 64, 700, 2048, 77])]
    hs = [Md5(eng) for m in msgs]
    update_many(eng, [(h, m[:5]) for h, m in zip(hs, msgs)])
    update_many(eng, [(h, m[5:]) for h, m in zip(hs, msgs)])
    one = Md5(eng, data[:3000])
    return all(h.digest() == hashlib.md5(m).digest() for h, m in zip(hs, msgs)) and \
        one.hexdigest() == hashlib.md5(data[:3000]).hexdigest()
