"""The lab's hash ring: build it, publish it to IMGAPI, point SAPI at it.

`ensure(cfg)` does what ``manta-adm create-topology`` does (fash.md §6.1,
reshard.md §3.1-3.3) when SAPI has no ``HASH_RING_IMAGE`` yet:

1. pnodes ``tcp://<host>:2020`` for every ``INDEX_MORAY_SHARDS`` entry (else
   ``cfg.pnode(shard)`` for every lab shard), ``cfg.vnodes`` vnodes, sha256,
   built with the collection's fash library (`create_ring`);
2. a gzip tarball whose root is the directory ``hash_ring/`` holding the
   LevelDB files, plus ``hash_ring/manta_hash_ring_stamp.json``
   (``{image_uuid, date, source_zone}``, as manta-reshard's create-archive);
3. imported into IMGAPI as image ``manta-hash-ring`` (AdminImportImage, then
   AddImageFile and ActivateImage), owner = the manta application's owner;
4. SAPI ``manta`` application metadata ``HASH_RING_IMAGE`` = the image uuid
   and ``HASH_RING_IMGAPI_SERVICE`` = the IMGAPI URL.

Helpers used by electric-moray setup, the ring swap, the seeder and tests:
`publish_ring(cfg, ring_dir, tags)`, `fetch_ring(cfg, image_uuid, dest_dir)`,
`sapi_app(cfg)`, `set_app_metadata(cfg, metadata)`.
"""
import datetime
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import uuid as uuidlib
from pathlib import Path

import requests

from .config import LabError

IMAGE_NAME = "manta-hash-ring"
from .ringfiles import STAMP
TIMEOUT = 60


# ---- SAPI / IMGAPI (just what the lab needs) ----------------------------------

def _json(resp, what):
    try:
        body = resp.json()
    except ValueError:
        body = None
    if resp.status_code >= 300:
        msg = body.get("message") if isinstance(body, dict) else resp.text[:200]
        code = body.get("code") if isinstance(body, dict) else ""
        raise LabError("ring", f"{what}: HTTP {resp.status_code} {code}: {msg}")
    return body


def _req(method, url, what, **kw):
    kw.setdefault("timeout", TIMEOUT)
    try:
        return requests.request(method, url, **kw)
    except requests.RequestException as exc:
        raise LabError("ring", f"{what}: {exc}") from None


def sapi_app(cfg):
    """The SAPI ``manta`` application (LabError if SAPI or the app is missing)."""
    r = _req("GET", cfg.url("sapi") + "/applications", "SAPI ListApplications",
             params={"name": "manta", "include_master": "true"},
             headers={"Accept-Version": "~2"})
    apps = _json(r, "SAPI ListApplications name=manta")
    if not apps:
        raise LabError("ring", "SAPI has no 'manta' application (run the SAPI bootstrap first)")
    return apps[0]


def set_app_metadata(cfg, metadata, action="update"):
    app = sapi_app(cfg)
    r = _req("PUT", cfg.url("sapi") + f"/applications/{app['uuid']}", "SAPI UpdateApplication",
             json={"action": action, "metadata": metadata})
    return _json(r, "SAPI UpdateApplication")


def instance_metadata(cfg, instance_uuid):
    """Merged metadata for a SAPI instance (GET /configs/:uuid), or the
    application's metadata when the instance is unknown to SAPI."""
    r = _req("GET", cfg.url("sapi") + f"/configs/{instance_uuid}", "SAPI GetConfig")
    if r.status_code == 200:
        try:
            md = r.json().get("metadata")
            if isinstance(md, dict):
                return md
        except ValueError:
            pass
    return dict(sapi_app(cfg).get("metadata") or {})


def get_image(cfg, image_uuid, imgapi_url=None):
    r = _req("GET", (imgapi_url or cfg.url("imgapi")) + f"/images/{image_uuid}", "IMGAPI GetImage")
    if r.status_code == 404:
        return None
    return _json(r, f"IMGAPI GetImage {image_uuid}")


def download_image_file(cfg, image_uuid, dest, imgapi_url=None):
    """GetImageFile into ``dest``; checks the sha1 against the manifest."""
    base = imgapi_url or cfg.url("imgapi")
    img = get_image(cfg, image_uuid, base)
    if img is None:
        raise LabError("ring", f"IMGAPI {base} has no image {image_uuid}")
    want = (img.get("files") or [{}])[0].get("sha1")
    h = hashlib.sha1()
    try:
        with requests.get(base + f"/images/{image_uuid}/file", stream=True, timeout=TIMEOUT) as r:
            if r.status_code != 200:
                _json(r, f"IMGAPI GetImageFile {image_uuid}")
                raise LabError("ring", f"IMGAPI GetImageFile {image_uuid}: HTTP {r.status_code}")
            with open(dest, "wb") as fh:
                for chunk in r.iter_content(1 << 20):
                    h.update(chunk)
                    fh.write(chunk)
    except requests.RequestException as exc:
        raise LabError("ring", f"IMGAPI GetImageFile {image_uuid}: {exc}") from None
    if want and h.hexdigest() != want:
        raise LabError("ring", f"image {image_uuid}: file sha1 {h.hexdigest()} != manifest {want}")
    return img


# ---- ring archive ------------------------------------------------------------

def _iso_now():
    return datetime.datetime.now(datetime.timezone.utc)


def tar_ring(ring_dir, dest):
    """gzip tar with ``hash_ring/`` at the root (``tar -czf dest -C parent hash_ring``)."""
    ring_dir = Path(ring_dir)
    with tarfile.open(dest, "w:gz") as tf:
        tf.add(str(ring_dir), arcname="hash_ring", recursive=False)
        for p in sorted(ring_dir.iterdir()):
            if p.is_file():
                tf.add(str(p), arcname=f"hash_ring/{p.name}")
    return dest


def extract_ring(tarball, dest_dir):
    """Extract only the archive member ``hash_ring`` with its first path
    component stripped (``gtar --strip-components=1 -C dest hash_ring``)."""
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    n = 0
    with tarfile.open(tarball, "r:*") as tf:
        for m in tf.getmembers():
            parts = m.name.lstrip("./").split("/", 1)
            if parts[0] != "hash_ring" or len(parts) < 2 or not parts[1]:
                continue
            if not m.isfile() or "/" in parts[1] or parts[1] in ("..", "."):
                continue
            with tf.extractfile(m) as src, open(dest / parts[1], "wb") as out:
                shutil.copyfileobj(src, out)
            n += 1
    if n == 0:
        raise LabError("ring", f"{tarball}: no hash_ring/ directory in the archive")
    return dest


def publish_ring(cfg, ring_dir, tags=None, source_zone="lab", description="Manta Hash Ring"):
    """Stamp, tar and import ``ring_dir`` into IMGAPI as a new active
    ``manta-hash-ring`` image; returns its uuid. The ring must not be open."""
    image_uuid = str(uuidlib.uuid4())
    now = _iso_now()
    stamp = {"image_uuid": image_uuid, "date": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
             "source_zone": source_zone}
    Path(ring_dir, STAMP).write_text(json.dumps(stamp) + "\n")
    app = sapi_app(cfg)
    base = cfg.url("imgapi")
    with tempfile.TemporaryDirectory(prefix="ring-", dir=cfg.home) as tmp:
        tgz = os.path.join(tmp, "new_hash_ring.tar.gz")
        tar_ring(ring_dir, tgz)
        data = Path(tgz).read_bytes()
    sha1 = hashlib.sha1(data).hexdigest()
    manifest = {
        "v": 2, "uuid": image_uuid, "owner": app["owner_uuid"], "name": IMAGE_NAME,
        "version": now.strftime("%Y%m%dT%H%M%SZ"), "state": "active", "public": False,
        "published_at": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z",
        "type": "other", "os": "other", "description": description,
        "files": [{"sha1": sha1, "size": len(data), "compression": "gzip"}],
    }
    if tags:
        manifest["tags"] = dict(tags)
    _json(_req("POST", base + f"/images/{image_uuid}", "IMGAPI AdminImportImage",
               params={"action": "import", "skip_owner_check": "true"}, json=manifest),
          "IMGAPI AdminImportImage")
    try:
        _json(_req("PUT", base + f"/images/{image_uuid}/file", "IMGAPI AddImageFile",
                   params={"compression": "gzip", "sha1": sha1}, data=data,
                   headers={"Content-Type": "application/octet-stream"}),
              "IMGAPI AddImageFile")
        _json(_req("POST", base + f"/images/{image_uuid}", "IMGAPI ActivateImage",
                   params={"action": "activate"}), "IMGAPI ActivateImage")
    except LabError:
        _req("DELETE", base + f"/images/{image_uuid}", "IMGAPI DeleteImage")
        raise
    return image_uuid


def fetch_ring(cfg, image_uuid, dest_dir, imgapi_url=None):
    """Download image ``image_uuid`` and extract its ``hash_ring/`` into
    ``dest_dir`` (created; must not hold a ring already). Returns dest_dir."""
    dest = Path(dest_dir)
    if dest.exists() and any(dest.iterdir()):
        raise LabError("ring", f"{dest} is not empty; fetch_ring needs a new directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ring-", dir=str(dest.parent)) as tmp:
        tgz = os.path.join(tmp, f"{image_uuid}.tar.gz")
        download_image_file(cfg, image_uuid, tgz, imgapi_url)
        extract_ring(tgz, dest)
    return dest


# ---- ensure ----------------------------------------------------------------------

def index_shard_hosts(cfg, app=None):
    app = app or sapi_app(cfg)
    shards = (app.get("metadata") or {}).get("INDEX_MORAY_SHARDS")
    if isinstance(shards, list) and shards:
        return [s["host"] for s in shards if isinstance(s, dict) and s.get("host")]
    return [cfg.shard_name(n) for n in range(1, cfg.shards + 1)]


def build_ring(cfg, dest, hosts=None, vnodes=None):
    """Create a fresh LevelDB ring at ``dest`` (must not exist)."""
    from ansible_collections.manta.ops.plugins.module_utils.fash import create_ring
    hosts = hosts or [cfg.shard_name(n) for n in range(1, cfg.shards + 1)]
    create_ring(str(dest), [cfg.pnode(h) for h in hosts], vnodes or cfg.vnodes, algorithm="sha256")
    return dest


def ensure(cfg):
    """SAPI HASH_RING_IMAGE exists (build + publish the ring once)."""
    app = sapi_app(cfg)
    md = app.get("metadata") or {}
    img = md.get("HASH_RING_IMAGE")
    if img and get_image(cfg, img, md.get("HASH_RING_IMGAPI_SERVICE")) is not None:
        if not md.get("HASH_RING_IMGAPI_SERVICE"):
            set_app_metadata(cfg, {"HASH_RING_IMGAPI_SERVICE": cfg.url("imgapi")})
        return {"image_uuid": img, "created": False}
    if img:
        raise LabError("ring", f"SAPI HASH_RING_IMAGE={img} but IMGAPI has no such image; "
                       "refusing to replace it (delete the key to rebuild)")
    hosts = index_shard_hosts(cfg, app)
    if not isinstance(md.get("INDEX_MORAY_SHARDS"), list):
        shards = [{"host": h} for h in hosts]
        shards[-1]["last"] = True
        set_app_metadata(cfg, {"INDEX_MORAY_SHARDS": shards})
    work = cfg.path("ring", "work")
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="create-topology-", dir=str(work)) as tmp:
        ring_dir = Path(tmp, "hash_ring")
        build_ring(cfg, ring_dir, hosts)
        image = publish_ring(cfg, ring_dir, source_zone="lab-create-topology")
    set_app_metadata(cfg, {"HASH_RING_IMAGE": image,
                           "HASH_RING_IMGAPI_SERVICE": cfg.url("imgapi")})
    return {"image_uuid": image, "created": True, "pnodes": [cfg.pnode(h) for h in hosts],
            "vnodes": cfg.vnodes}


def describe(cfg):
    try:
        md = sapi_app(cfg).get("metadata") or {}
    except LabError as exc:
        return {"error": str(exc)}
    return {"image_uuid": md.get("HASH_RING_IMAGE"),
            "imgapi": md.get("HASH_RING_IMGAPI_SERVICE")}
