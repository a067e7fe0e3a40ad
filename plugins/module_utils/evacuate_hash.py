# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""MD5 for the copy engine's concurrent transfers.

One transfer's MD5 is a chain no core can speed up, and it was most of the engine's
CPU (OpenSSL, ~1.2 s per GiB). The transfers are independent, though, so their
chunks can be hashed together, one per SIMD lane (:mod:`md5_lanes`: 16 lanes with
AVX-512, 8 with AVX2).

:class:`LaneHasher` gathers them. A fetch thread receives a chunk into a slot of its
:class:`PieceRing`, submits it (:meth:`~LaneHasher.submit`), writes it to the temporary
file and goes on receiving (the rest of the object, then the next object) into the
next slots; it waits only when it comes round to a slot whose chunk is not hashed
yet. The copy's MD5 is checked later, before its rename. One hashing thread takes
a chunk of every transfer that has one queued as one batch; while it hashes, the
next batch gathers, so the batches fill up exactly when hashing is the bottleneck
(a batch costs about the same whether 2 lanes or 16 are filled: each MD5 step is a
chain of dependent instructions, whatever the width).

:class:`PlainHasher` is the same interface over hashlib, used where the native
library cannot be built (no C compiler on the host) or is switched off
(``MANTA_OPS_MD5_ENGINE=hashlib``).
"""
from __future__ import annotations

import collections
import hashlib
import threading

from ansible_collections.manta.ops.plugins.module_utils import md5_lanes

# A batch larger than the lanes is fine (the library refills a lane as soon as its
# chunk is done), but a bound keeps any one wait short.
MAX_BATCH = 64


class PlainHasher:
    """hashlib, chunk by chunk, in the calling thread."""

    name = "hashlib"

    def new(self):
        return hashlib.md5()

    def submit(self, h, chunk):
        h.update(chunk)

    def wait(self, ticket, quiet=False):
        pass

    def close(self):
        pass

    def stats(self):
        return {"engine": self.name}


class _Ticket:
    __slots__ = ("h", "chunk", "done", "error")

    def __init__(self, h, chunk):
        self.h, self.chunk, self.done, self.error = h, chunk, False, None


class LaneHasher:
    """Chunks of many transfers hashed together in SIMD lanes by one thread (a second
    thread, on the other core, halved the batches and was slower here)."""

    def __init__(self, engine):
        self.engine = engine
        self.name = f"md5_lanes/{engine.isa}"
        self.lock = threading.Lock()
        self.work = threading.Condition(self.lock)   # the hashing thread waits here
        self.ready = threading.Condition(self.lock)  # submitters wait here
        self.pending = collections.deque()
        self.closed = False
        self.calls = 0
        self.chunks = 0
        self.thread = threading.Thread(target=self._run, name="copy-md5", daemon=True)
        self.thread.start()

    def new(self):
        return md5_lanes.Md5(self.engine)

    def submit(self, h, chunk):
        """Queue ``chunk`` (which must stay unchanged until it is hashed) for ``h``."""
        t = _Ticket(h, chunk)
        with self.lock:
            if self.closed:
                raise RuntimeError("the hasher is closed")
            self.pending.append(t)
            self.work.notify()
        return t

    def wait(self, ticket, quiet=False):
        """Until ``ticket``'s chunk is hashed; raises what hashing it raised unless
        ``quiet`` (a caller that only needs the buffer back)."""
        with self.lock:
            while not ticket.done:
                self.ready.wait()
        if ticket.error is not None and not quiet:
            raise ticket.error

    def _take(self):
        """(under the lock) The next batch, or None once closed and drained: the first
        queued chunk of each transfer (a second one must wait for the first anyway,
        and stays queued in its order)."""
        while not self.pending and not self.closed:
            self.work.wait()
        if not self.pending:
            return None
        batch, rest, seen = [], collections.deque(), set()
        for t in self.pending:
            if id(t.h) in seen or len(batch) >= MAX_BATCH:
                rest.append(t)
            else:
                seen.add(id(t.h))
                batch.append(t)
        self.pending = rest
        return batch

    def _run(self):
        while True:
            with self.lock:
                batch = self._take()
            if batch is None:
                return
            err = None
            try:
                # ctypes drops the GIL for the call: the fetch threads keep receiving
                md5_lanes.update_many(self.engine, [(t.h, t.chunk) for t in batch])
            except Exception as exc:  # noqa: BLE001 - handed to every waiter
                err = exc
            with self.lock:
                self.calls += 1
                self.chunks += len(batch)
                for t in batch:
                    t.done, t.error, t.chunk = True, err, None
                self.ready.notify_all()

    def close(self):
        """Hash what is queued, then stop the thread."""
        with self.lock:
            self.closed = True
            self.work.notify()
        self.thread.join(timeout=30)

    def stats(self):
        return {"engine": self.name, "lanes": self.engine.lanes, "batches": self.calls,
                "chunks_per_batch": round(self.chunks / self.calls, 2) if self.calls else 0}


class PieceRing:
    """A fetch thread's receive buffer: ``pieces`` slots of ``size`` bytes used in turn.
    A slot is handed out again only once the hasher is done with the chunk it last held,
    so a thread runs up to ``pieces`` chunks ahead of its hashes without copying them."""

    def __init__(self, pieces, size):
        self.size = size
        self.view = memoryview(bytearray(pieces * size))
        self.tickets = [None] * pieces
        self.next = 0

    def take(self, hasher):
        """(slot, memoryview) of the next free slot."""
        j = self.next
        t = self.tickets[j]
        if t is not None:
            self.tickets[j] = None
            hasher.wait(t, quiet=True)  # its object's verification reports any error
        self.next = (j + 1) % len(self.tickets)
        return j, self.view[j * self.size:(j + 1) * self.size]

    def hold(self, slot, ticket):
        self.tickets[slot] = ticket


def hasher():
    """A :class:`LaneHasher` where the native library builds and loads with SIMD lanes,
    else a :class:`PlainHasher` (OpenSSL's MD5 beats one scalar lane)."""
    eng = md5_lanes.engine()
    if eng is None or eng.lanes < 2:
        return PlainHasher()
    return LaneHasher(eng)
