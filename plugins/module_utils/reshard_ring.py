# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Hash-ring images for a reshard, and their installation on electric-moray.

Building (controller side, ``build_rings``): from the topology of the current
ring image, a *transitional* ring (the same mapping, data ``ro`` on the
moving vnodes: electric-moray refuses writes to exactly those vnodes) and a
*final* ring (the moving vnodes remapped to the new pnode). Each is written
as a fresh LevelDB ring, stamped (``manta_hash_ring_stamp.json``:
``{image_uuid, date, source_zone, plan, role}``), packed as
``hash_ring/`` in a gzip tarball and imported into IMGAPI as
``manta-hash-ring`` tagged with the plan (reshard.md §3.2-3.3).

Installing (electric-moray side): ``stage`` downloads and verifies an image
next to the ring (``<ring>.reshard/<image>``) before any write is blocked;
``swap`` is the in-place ring swap of ``electric-moray-update-ring.sh``
(§3.4): stop the process, move the ring aside (kept for a roll back), move
the staged ring in, start it, and wait until its status reports the new
stamp. Every step first looks at the real state (stamp file, staged
directory, status endpoint), so a swap killed half way is completed by the
next run.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import uuid as uuidlib

STAMP = "manta_hash_ring_stamp.json"
IMAGE_NAME = "manta-hash-ring"


class RingSwapError(Exception):
    pass


def read_stamp(ring_dir):
    try:
        with open(os.path.join(ring_dir, STAMP)) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def stamp_image(ring_dir):
    st = read_stamp(ring_dir)
    return (st or {}).get("image_uuid")


def staging_root(ring_path):
    return ring_path.rstrip("/") + ".reshard"


# ---- building -------------------------------------------------------------------------------

def tar_ring(ring_dir, dest):
    """gzip tar whose root is ``hash_ring/`` (deterministic order)."""
    with tarfile.open(dest, "w:gz") as tf:
        tf.add(ring_dir, arcname="hash_ring", recursive=False)
        for name in sorted(os.listdir(ring_dir)):
            p = os.path.join(ring_dir, name)
            if os.path.isfile(p) and name != "LOCK":
                tf.add(p, arcname=f"hash_ring/{name}")
    return dest


def sha1_of(path):
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_ring_dir(topology, dest, image_uuid, plan, role, source="manta.ops reshard"):
    """Write ``topology`` as a new ring at ``dest`` with its stamp."""
    from ansible_collections.manta.ops.plugins.module_utils.fash import write_topology
    write_topology(topology, dest)
    stamp = {"image_uuid": image_uuid,
             "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
             "source_zone": source, "plan": plan, "role": role}
    with open(os.path.join(dest, STAMP), "w") as fh:
        json.dump(stamp, fh)
        fh.write("\n")
    return stamp


def manifest(image_uuid, owner, sha1, size, plan, role, transition):
    now = datetime.datetime.now(datetime.timezone.utc)
    return {
        "v": 2, "uuid": image_uuid, "owner": owner, "name": IMAGE_NAME,
        "version": now.strftime("%Y%m%dT%H%M%SZ"), "state": "active", "public": False,
        "published_at": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z",
        "type": "other", "os": "other", "description": f"Manta Hash Ring ({role}, reshard plan {plan})",
        "files": [{"sha1": sha1, "size": int(size), "compression": "gzip"}],
        "tags": {"manta_reshard_plan": plan, "manta_reshard_ring": role,
                 "manta_reshard_transition": transition},
    }


def publish(imgapi, topology, workdir, owner, plan, role, transition):
    """Build, pack and import one ring image. Returns (image uuid, sha1, size, stamp)."""
    image_uuid = str(uuidlib.uuid4())
    os.makedirs(workdir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f"{role}-", dir=workdir)
    try:
        rd = os.path.join(tmp, "hash_ring")
        stamp = build_ring_dir(topology, rd, image_uuid, plan, role)
        tgz = os.path.join(tmp, "hash_ring.tar.gz")
        tar_ring(rd, tgz)
        sha1, size = sha1_of(tgz), os.path.getsize(tgz)
        man = manifest(image_uuid, owner, sha1, size, plan, role, transition)
        imgapi.import_image(image_uuid, man, skip_owner_check=True)
        try:
            imgapi.add_file(image_uuid, tgz, "gzip", sha1=sha1, size=size)
            imgapi.activate(image_uuid)
        except Exception:
            try:
                imgapi.delete_image(image_uuid)
            except Exception:  # noqa: BLE001
                pass
            raise
        return image_uuid, sha1, size, stamp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- staging / swapping on electric-moray -------------------------------------------------------

def extract_ring(tarball, dest):
    os.makedirs(dest, exist_ok=True)
    n = 0
    with tarfile.open(tarball, "r:*") as tf:
        for m in tf.getmembers():
            parts = m.name.lstrip("./").split("/")
            if len(parts) != 2 or parts[0] != "hash_ring" or not parts[1] or not m.isfile():
                continue
            with tf.extractfile(m) as src, open(os.path.join(dest, parts[1]), "wb") as out:
                shutil.copyfileobj(src, out)
            n += 1
    if n == 0:
        raise RingSwapError(f"{tarball}: the image has no hash_ring/ directory")


def verify_ring_dir(path, image_uuid):
    """The staged ring opens, has vnodes and carries the expected stamp."""
    from ansible_collections.manta.ops.plugins.module_utils.fash import read_topology
    st = stamp_image(path)
    if st != image_uuid:
        raise RingSwapError(f"ring at {path} is stamped {st!r}, expected image {image_uuid}")
    topo = read_topology(path, snapshot=True)
    if topo.vnode_count < 1:
        raise RingSwapError(f"ring at {path} has no vnodes")
    return {"vnodes": topo.vnode_count, "pnodes": topo.counts() if hasattr(topo, "counts") else None}


def staged_dir(ring_path, image_uuid):
    return os.path.join(staging_root(ring_path), image_uuid)


def is_staged(ring_path, image_uuid):
    d = staged_dir(ring_path, image_uuid)
    return os.path.isdir(d) and stamp_image(d) == image_uuid and os.path.exists(os.path.join(d, "CURRENT"))


def stage(imgapi, ring_path, image_uuid):
    """Download + extract + verify ``image_uuid`` into the staging dir. Returns True if it staged."""
    if stamp_image(ring_path) == image_uuid or is_staged(ring_path, image_uuid):
        return False
    root = staging_root(ring_path)
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{image_uuid}.", dir=root)
    try:
        img = imgapi.get_image(image_uuid)
        want = ((img.get("files") or [{}])[0]).get("sha1")
        tgz = os.path.join(tmp, "ring.tar.gz")
        got = imgapi.download_file(image_uuid, tgz)
        sha1 = got[0] if isinstance(got, (tuple, list)) else sha1_of(tgz)
        if want and sha1 != want:
            raise RingSwapError(f"image {image_uuid}: downloaded file sha1 {sha1} != manifest {want}")
        rd = os.path.join(tmp, "hash_ring")
        extract_ring(tgz, rd)
        verify_ring_dir(rd, image_uuid)
        dest = staged_dir(ring_path, image_uuid)
        if os.path.exists(dest):
            shutil.rmtree(dest)
        os.rename(rd, dest)
        return True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- rolling swaps --------------------------------------------------------------------------------

def serving_ts(status, start_time=True):
    """When an electric-moray process began serving (epoch seconds), from its own status document:
    ``serving_since`` (its RPC port listening), else (with ``start_time``) ``start_time`` (process start),
    else None."""
    from ansible_collections.manta.ops.plugins.module_utils.reshard_journal import parse_iso
    for key in ("serving_since", "start_time") if start_time else ("serving_since",):
        v = (status or {}).get(key)
        if v:
            try:
                return parse_iso(v)
            except (TypeError, ValueError):
                continue
    return None


def batch_size(n, batch=0):
    """How many electric-morays are swapped at once: ``batch`` when given (> 0), else max(1, n // 3), as
    manta-reshard did (reshard.md §3.4); never all of them when there are two or more, so that one
    always serves."""
    if n <= 0:
        return 0
    b = int(batch) if batch and int(batch) > 0 else max(1, n // 3)
    if n >= 2:
        b = min(b, n - 1)
    return max(1, min(b, n))


def swap_batches(order, batch=0):
    """``order`` (the electric-morays in swap order) cut into consecutive batches of batch_size()."""
    order = list(order)
    b = batch_size(len(order), batch)
    return [order[i:i + b] for i in range(0, len(order), b)] if b else []


def rolling_wait_for(order, me, batch=0):
    """The electric-morays that must serve the new ring before ``me`` is swapped: every one in an earlier
    batch. Those in ``me``'s own batch are swapped at the same time; later batches wait for it."""
    order = list(order)
    if me not in order:
        raise ValueError(f"{me} is not in the swap order {order}")
    out = []
    for b in swap_batches(order, batch):
        if me in b:
            return out
        out.extend(b)
    return out
