# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""IMGAPI client and the idempotent-import logic (reference/triton_apis.md §2).

Import is the three calls ``sdc-imgadm import -m manifest -f file`` makes:
AdminImportImage (``POST /images/:uuid?action=import``), AddImageFile
(``PUT /images/:uuid/file?compression=&sha1=``) and ActivateImage
(``POST /images/:uuid?action=activate``). IMGAPI reads ``action`` and its
flags only from the query string, and the manifest only from the JSON body.

:func:`plan_import` decides, from what already exists, which of those steps
are still needed, so that a re-run after any failure converges:

* an image with the manifest's uuid, or else one with the same name, owner
  and tags whose file has the same sha1 (or, unactivated, no file yet), is
  reused;
* an existing uuid is never re-imported (IMGAPI answers 409).
"""
from __future__ import annotations

import hashlib
import os

from ansible_collections.manta.ops.plugins.module_utils.http_api import ApiClient, ApiError

COMPRESSIONS = ("bzip2", "gzip", "none")
EXT_COMPRESSION = {".bz2": "bzip2", ".gz": "gzip", ".tgz": "gzip"}
REQUIRED_MANIFEST = ("name", "version", "type", "os")
# Fields IMGAPI computes itself; never compared nor sent.
SERVER_FIELDS = ("state", "files", "activated", "published_at", "disabled", "v", "uuid")


class ImageError(ValueError):
    """Bad input or an existing image that conflicts with the request."""


def sha1_file(path, bufsize=1 << 20):
    h = hashlib.sha1()
    size = 0
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(bufsize)
            if not chunk:
                break
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def compression_for(path, manifest=None, option=None):
    """``option``, else ``manifest.files[0].compression``, else the file
    extension (.bz2, .gz). Raises ImageError if none of them says."""
    if option:
        if option not in COMPRESSIONS:
            raise ImageError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {option!r}")
        return option
    files = (manifest or {}).get("files") or []
    if files and isinstance(files[0], dict) and files[0].get("compression"):
        comp = files[0]["compression"]
        if comp not in COMPRESSIONS:
            raise ImageError(f"manifest files[0].compression must be one of {', '.join(COMPRESSIONS)}, "
                             f"got {comp!r}")
        return comp
    ext = os.path.splitext(path or "")[1].lower()
    if ext in EXT_COMPRESSION:
        return EXT_COMPRESSION[ext]
    raise ImageError(f"could not determine the compression of {path!r} (expected a .bz2/.gz name, "
                     "manifest files[0].compression, or the compression option)")


def validate_manifest(manifest):
    if not isinstance(manifest, dict):
        raise ImageError(f"manifest must be a JSON object, got {type(manifest).__name__}")
    missing = [k for k in REQUIRED_MANIFEST if not manifest.get(k)]
    if missing:
        raise ImageError(f"manifest is missing required field(s): {', '.join(missing)} "
                         f"(required: {', '.join(REQUIRED_MANIFEST)})")
    tags = manifest.get("tags")
    if tags is not None and not isinstance(tags, dict):
        raise ImageError(f"manifest tags must be an object, got {tags!r}")
    return manifest


def import_body(manifest, uuid):
    """The AdminImportImage body: the manifest with our uuid and ``v: 2``,
    without the server-computed ``state``/``files``."""
    body = {k: v for k, v in manifest.items() if k not in ("state", "files", "activated")}
    body["uuid"] = uuid
    body.setdefault("v", 2)
    return body


def file_sha1(image):
    files = (image or {}).get("files") or []
    return files[0].get("sha1") if files and isinstance(files[0], dict) else None


def tags_match(image, tags):
    itags = (image or {}).get("tags") or {}
    return all(k in itags and itags[k] == v for k, v in (tags or {}).items())


def is_candidate(image, manifest, sha1):
    """Same name, owner (if the manifest names one) and tags, and a file with
    this sha1 (or no file yet, if still unactivated)."""
    if image.get("name") != manifest.get("name"):
        return False
    if manifest.get("owner") and image.get("owner") != manifest["owner"]:
        return False
    if not tags_match(image, manifest.get("tags")):
        return False
    have = file_sha1(image)
    if have is None:
        return image.get("state") == "unactivated"
    return have == sha1


def plan_import(existing, sha1, activate=True):
    """Steps still needed for ``existing`` (an image or None): a subset, in
    order, of ``["import", "add_file", "activate"]``. Raises ImageError when
    the existing image can never become the requested one."""
    if existing is None:
        return ["import", "add_file"] + (["activate"] if activate else [])
    state = existing.get("state")
    have = file_sha1(existing)
    if state in ("active", "disabled") or existing.get("activated"):
        if have != sha1:
            raise ImageError(f"image {existing.get('uuid')} is {state} with file sha1 {have}, expected "
                             f"{sha1}; an activated image's file cannot change (ImageFilesImmutable)")
        return []
    if state != "unactivated":
        raise ImageError(f"image {existing.get('uuid')} is in state {state!r}; expected unactivated "
                         "or active")
    steps = [] if have == sha1 else ["add_file"]
    if activate:
        steps.append("activate")
    return steps


def image_view(image):
    """A compact view of an image for results and diffs."""
    if image is None:
        return None
    keys = ("uuid", "name", "version", "owner", "state", "type", "os", "tags", "published_at")
    view = {k: image.get(k) for k in keys}
    view["files"] = [{k: f.get(k) for k in ("sha1", "size", "compression")}
                     for f in (image.get("files") or []) if isinstance(f, dict)]
    return view


class ImgapiClient(ApiClient):
    service = "IMGAPI"

    def get_image(self, uuid):
        return self.get(f"/images/{uuid}")

    def get_image_or_none(self, uuid):
        return self.get_or_none(f"/images/{uuid}")

    def list_images(self, name=None, owner=None, state="all", tags=None, image_type=None,
                    version=None, limit=None):
        params = {}
        for k, v in (("name", name), ("owner", owner), ("state", state), ("type", image_type),
                     ("version", version), ("limit", limit)):
            if v is not None:
                params[k] = v
        for k, v in (tags or {}).items():
            params[f"tag.{k}"] = v if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else v
        images = self.get_list("/images", params=params)
        # Filter again client-side: the server's tag filter is string-typed.
        return [i for i in images if tags_match(i, tags)] if tags else images

    def import_image(self, uuid, manifest, skip_owner_check=False):
        params = {"action": "import"}
        if skip_owner_check:
            params["skip_owner_check"] = "true"
        return self.request("POST", f"/images/{uuid}", params=params, body=import_body(manifest, uuid),
                            expect=(200,), idempotent=False)

    def add_file(self, uuid, path, compression, sha1=None, size=None, timeout=None):
        params = {"compression": compression}
        if sha1:
            params["sha1"] = sha1
        if size is None:
            size = os.path.getsize(path)
        if size == 0:
            # requests would announce an empty file object as chunked
            # (Transfer-Encoding) next to our Content-Length: send no stream.
            return self.request("PUT", f"/images/{uuid}/file", params=params, data=b"",
                                headers={"Content-Type": "application/octet-stream"},
                                expect=(200,), timeout=timeout)
        with open(path, "rb") as fh:
            # PUT of the same bytes is idempotent; the handle is rewound on retry.
            return self.request("PUT", f"/images/{uuid}/file", params=params, data=fh,
                                headers={"Content-Type": "application/octet-stream",
                                         "Content-Length": str(size)},
                                expect=(200,), timeout=timeout)

    def activate(self, uuid):
        return self.request("POST", f"/images/{uuid}", params={"action": "activate"}, expect=(200,),
                            idempotent=False)

    def delete_image(self, uuid):
        try:
            self.request("DELETE", f"/images/{uuid}", expect=(200, 204))
        except ApiError as exc:
            if exc.not_found:
                return False
            raise
        return True

    def download_file(self, uuid, dest_tmp, timeout=None):
        """Stream the image file into ``dest_tmp``; returns (sha1, size, etag)."""
        resp = self.request("GET", f"/images/{uuid}/file", expect=(200,), raw=True, stream=True,
                            timeout=timeout)
        h = hashlib.sha1()
        size = 0
        try:
            with open(dest_tmp, "wb") as fh:
                for chunk in resp.iter_content(1 << 20):
                    fh.write(chunk)
                    h.update(chunk)
                    size += len(chunk)
        finally:
            resp.close()
        return h.hexdigest(), size, resp.headers.get("Etag") or resp.headers.get("ETag")
