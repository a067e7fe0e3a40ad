#!/usr/bin/python
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
from __future__ import annotations

DOCUMENTATION = r"""
module: imgapi_image
short_description: Import, activate, download, list and delete IMGAPI images
version_added: 0.1.0
description:
  - V(present) imports an image from a manifest and a file the way
    C(sdc-imgadm import -m manifest -f file) does (AdminImportImage,
    AddImageFile, ActivateImage), idempotently. An existing image is reused
    instead of imported again when it has the requested uuid, or else the
    same name, owner and tags as the manifest and a file with the same sha1
    (or, still unactivated, no file yet). Only the missing steps (add the
    file, activate) are run. An image that this run imported is deleted again
    if adding its file or activating it fails, as C(sdc-imgadm) does.
  - V(downloaded) saves an image's file (C(GET /images/:uuid/file)) to
    O(dest), verifying its sha1, unless O(dest) already holds it.
  - V(query) returns images by name, owner, tags and state.
  - V(absent) deletes an image.
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - manta.ops.triton_api
  - manta.ops.triton_api.imgapi
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
options:
  state:
    description: What to do (see the description).
    type: str
    choices: [present, absent, downloaded, query]
    default: present
  uuid:
    description:
      - V(present), the uuid to import the image under (default the
        manifest's C(uuid), else a new random uuid).
      - V(absent), V(downloaded), the image to act on; V(query), return only
        this image.
    type: str
  manifest:
    description:
      - The image manifest (v2) for V(present). Needs C(name), C(version),
        C(type) and C(os); C(owner) and C(tags) are used to find an existing
        copy. C(state) and C(files) are ignored as IMGAPI does, except that
        C(files[0].compression) and C(files[0].sha1) are used as defaults
        and checked against O(file).
    type: dict
  manifest_path:
    description: A JSON file holding the manifest, instead of O(manifest).
    type: path
  file:
    description: The image file to upload (V(present)).
    type: path
  compression:
    description:
      - Compression of O(file). Defaults to the manifest's
        C(files[0].compression), else to the file extension (C(.bz2),
        C(.gz)).
    type: str
    choices: [bzip2, gzip, none]
  activate:
    description: Activate the image after adding its file (V(present)).
    type: bool
    default: true
  skip_owner_check:
    description: Send C(skip_owner_check=true) on import (the owner is not looked up in UFDS).
    type: bool
    default: false
  dest:
    description: Where V(downloaded) writes the file. Written to a temporary file, checked, then renamed.
    type: path
  name:
    description: V(query) filter, exact name (IMGAPI C(~) prefix for a substring).
    type: str
  owner:
    description: V(query) filter, owner uuid.
    type: str
  tags:
    description: V(query) filter, every tag must be present with this value.
    type: dict
  image_state:
    description: V(query) filter on the image state.
    type: str
    choices: [active, unactivated, disabled, all]
    default: all
  transfer_timeout:
    description: Seconds allowed for uploading or downloading the file.
    type: int
    default: 3600
author:
  - manta.ops developers (@manta-ops)
"""

EXAMPLES = r"""
- name: Publish the remapped hash ring (a re-run reuses the image with the same tags and sha1)
  manta.ops.imgapi_image:
    manifest:
      name: manta-hash-ring
      version: "{{ lookup('pipe', 'date -u +%Y%m%dT%H%M%SZ') }}"
      type: other
      os: other
      owner: "{{ poseidon_uuid }}"
      description: Manta Hash Ring
      tags:
        manta_reshard_plan: "{{ plan_uuid }}"
    file: "{{ reshard_workdir }}/hash_ring.tar.gz"
  register: ring

- name: Find this plan's ring image
  manta.ops.imgapi_image:
    state: query
    name: manta-hash-ring
    owner: "{{ poseidon_uuid }}"
    tags: {manta_reshard_plan: "{{ plan_uuid }}"}
  register: rings

- name: Download the current ring
  manta.ops.imgapi_image:
    state: downloaded
    uuid: "{{ hash_ring_image }}"
    dest: "{{ reshard_workdir }}/old_ring.tar.gz"
"""

RETURN = r"""
image:
  description: The image after the run (predicted in check mode).
  returned: success, except with state query
  type: dict
  sample: {"uuid": "2c0a...", "name": "manta-hash-ring", "state": "active", "files": [{"sha1": "9f0e...", "size": 1024, "compression": "gzip"}]}
uuid:
  description: Uuid of the image.
  returned: success, except with state query
  type: str
steps:
  description: The steps run (or that would run in check mode), among import, add_file, activate, delete, download.
  returned: success
  type: list
  elements: str
reused:
  description: True when V(present) found an existing image instead of importing one.
  returned: state is present
  type: bool
images:
  description: The images found by V(query).
  returned: state is query
  type: list
  elements: dict
dest:
  description: The downloaded file.
  returned: state is downloaded
  type: str
sha1:
  description: Sha1 of the uploaded or downloaded file.
  returned: state is present or downloaded
  type: str
rolled_back:
  description: True when a failed add-file or activation deleted the image this run imported.
  returned: failure
  type: bool
diff:
  description: The image (uuid, state, file sha1) before and after.
  returned: when diff mode is on
  type: dict
"""

import json
import os
import tempfile
import uuid as uuidlib

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.manta.ops.plugins.module_utils import imgapi as I
from ansible_collections.manta.ops.plugins.module_utils.http_api import (
    ApiError, check_requests, client_kwargs, fail_api, require_url, triton_argument_spec)
from ansible_collections.manta.ops.plugins.module_utils.sapi import is_uuid


def short(image):
    if not image:
        return {}
    return {"uuid": image.get("uuid"), "state": image.get("state"), "sha1": I.file_sha1(image)}


class Runner:
    def __init__(self, module):
        self.module = module
        self.p = module.params
        self.client = I.ImgapiClient(require_url(module, "imgapi"), **client_kwargs(module))
        self.result = dict(changed=False, steps=[])

    def fail(self, msg, **kw):
        self.module.fail_json(msg=msg, **(self.result | kw))

    def api_fail(self, exc, what, **kw):
        fail_api(self.module, exc, what, **(self.result | kw))

    def get(self, uuid):
        try:
            return self.client.get_image_or_none(uuid)
        except ApiError as exc:
            self.api_fail(exc, f"cannot read image {uuid}")

    # ------------------------------------------------------------ present
    def load_manifest(self):
        p = self.p
        if p["manifest"] is not None:
            manifest = p["manifest"]
        elif p["manifest_path"]:
            try:
                with open(p["manifest_path"]) as fh:
                    manifest = json.load(fh)
            except (OSError, ValueError) as exc:
                self.fail(f"cannot read manifest_path {p['manifest_path']}: {exc}; expected a JSON object")
        else:
            self.fail("state=present needs manifest or manifest_path")
        try:
            return I.validate_manifest(manifest)
        except I.ImageError as exc:
            self.fail(str(exc))

    def candidates(self, manifest, sha1):
        try:
            found = self.client.list_images(name=manifest["name"], owner=manifest.get("owner"),
                                            state="all", tags=manifest.get("tags"))
        except ApiError as exc:
            self.api_fail(exc, f"cannot list images named {manifest['name']!r}")
        found = [i for i in found if I.is_candidate(i, manifest, sha1)]
        if len(found) <= 1:
            return found[0] if found else None
        with_file = [i for i in found if I.file_sha1(i) == sha1]
        active = [i for i in with_file if i.get("state") == "active"]
        pick = active or with_file
        if len(pick) == 1:
            return pick[0]
        self.fail(f"{len(found)} images match name {manifest['name']!r}, owner {manifest.get('owner')}, "
                  f"tags {manifest.get('tags')} and sha1 {sha1}: "
                  f"{', '.join(i['uuid'] for i in found)}; expected at most one. Delete the extras or give uuid",
                  images=[I.image_view(i) for i in found])

    def present(self):
        p = self.p
        manifest = self.load_manifest()
        if not p["file"]:
            self.fail("state=present needs file (the image file to upload)")
        if not os.path.isfile(p["file"]):
            self.fail(f"file {p['file']} does not exist or is not a regular file")
        try:
            compression = I.compression_for(p["file"], manifest, p["compression"])
        except I.ImageError as exc:
            self.fail(str(exc))
        sha1, size = I.sha1_file(p["file"])
        if size == 0:
            self.fail(f"file {p['file']} is empty; IMGAPI refuses a 0-byte image file (400 Download)")
        self.result["sha1"] = sha1
        mfiles = manifest.get("files") or []
        if mfiles and isinstance(mfiles[0], dict) and mfiles[0].get("sha1") and mfiles[0]["sha1"] != sha1:
            self.fail(f"file {p['file']} has sha1 {sha1} but the manifest's files[0].sha1 is "
                      f"{mfiles[0]['sha1']}; expected them to match")
        uuid = p["uuid"] or manifest.get("uuid")
        if uuid is not None and not is_uuid(uuid):
            self.fail(f"image uuid must be a UUID, got {uuid!r}")
        if p["uuid"] and manifest.get("uuid") and p["uuid"] != manifest["uuid"]:
            self.fail(f"uuid {p['uuid']} differs from the manifest uuid {manifest['uuid']}")

        existing = self.get(uuid) if uuid else None
        if existing is None:
            existing = self.candidates(manifest, sha1)
        try:
            steps = I.plan_import(existing, sha1, activate=p["activate"])
        except I.ImageError as exc:
            self.fail(str(exc), image=I.image_view(existing))
        uuid = existing["uuid"] if existing else (uuid or str(uuidlib.uuid4()))
        self.result.update(uuid=uuid, reused=existing is not None, steps=steps, changed=bool(steps))
        predicted = I.image_view(existing) if existing else I.image_view(
            I.import_body(manifest, uuid) | {"state": "unactivated", "files": []})
        if "add_file" in steps:
            predicted["files"] = [{"sha1": sha1, "size": size, "compression": compression}]
        if "activate" in steps:
            predicted["state"] = "active"
        self.result["image"] = predicted
        if self.module._diff:
            self.result["diff"] = {"before": short(existing),
                                   "after": {"uuid": uuid, "state": predicted["state"],
                                             "sha1": sha1 if ("add_file" in steps or existing) else None}}
        if self.module.check_mode or not steps:
            return

        imported = False
        image = existing
        if "import" in steps:
            try:
                image = self.client.import_image(uuid, manifest, skip_owner_check=p["skip_owner_check"])
                imported = True
            except ApiError as exc:
                self.result["changed"] = False
                self.api_fail(exc, f"IMGAPI import of image {uuid} ({manifest['name']} {manifest['version']}) failed")
        try:
            if "add_file" in steps:
                image = self.client.add_file(uuid, p["file"], compression, sha1=sha1, size=size,
                                             timeout=float(p["transfer_timeout"]))
                if I.file_sha1(image) not in (None, sha1):
                    raise ApiError("IMGAPI", "PUT", f"/images/{uuid}/file", status=200, code="ChecksumMismatch",
                                   api_message=f"stored file has sha1 {I.file_sha1(image)}",
                                   expected=f"sha1 {sha1}")
            if "activate" in steps:
                image = self.client.activate(uuid)
        except (ApiError, OSError) as exc:
            rolled_back = False
            if imported:
                try:
                    rolled_back = self.client.delete_image(uuid)
                except ApiError:
                    rolled_back = False
            self.result.update(rolled_back=rolled_back, changed=not rolled_back)
            what = ("add the file to" if "add_file" in steps else "activate") + f" image {uuid}"
            suffix = "; the image imported by this run was deleted again" if rolled_back else ""
            if isinstance(exc, ApiError):
                self.api_fail(exc, f"IMGAPI could not {what}{suffix}")
            self.fail(f"cannot read {p['file']} to {what}: {exc}{suffix}")
        self.result["image"] = I.image_view(image or self.get(uuid))

    # ------------------------------------------------------------ others
    def absent(self):
        p = self.p
        if not p["uuid"]:
            self.fail("state=absent needs uuid")
        image = self.get(p["uuid"])
        self.result.update(uuid=p["uuid"], image=I.image_view(image), changed=image is not None,
                           steps=["delete"] if image else [])
        if self.module._diff:
            self.result["diff"] = {"before": short(image), "after": {}}
        if image is not None and not self.module.check_mode:
            try:
                self.client.delete_image(p["uuid"])
            except ApiError as exc:
                self.result["changed"] = False
                self.api_fail(exc, f"IMGAPI could not delete image {p['uuid']}")

    def query(self):
        p = self.p
        try:
            if p["uuid"]:
                one = self.client.get_image_or_none(p["uuid"])
                images = [one] if one else []
            else:
                images = self.client.list_images(name=p["name"], owner=p["owner"],
                                                 state=p["image_state"], tags=p["tags"])
        except ApiError as exc:
            self.api_fail(exc, "cannot list images")
        self.result["images"] = [I.image_view(i) for i in images]

    def downloaded(self):
        p = self.p
        if not p["uuid"] or not p["dest"]:
            self.fail("state=downloaded needs uuid and dest")
        image = self.get(p["uuid"])
        if image is None:
            self.fail(f"no IMGAPI image {p['uuid']}: expected an existing image, found none (404)")
        want = I.file_sha1(image)
        if want is None:
            self.fail(f"image {p['uuid']} ({image.get('name')}) has no file to download "
                      f"(state {image.get('state')})", image=I.image_view(image))
        dest = p["dest"]
        if os.path.isdir(dest):
            self.fail(f"dest {dest} is a directory; expected a file path")
        have = I.sha1_file(dest)[0] if os.path.isfile(dest) else None
        self.result.update(uuid=p["uuid"], image=I.image_view(image), dest=dest, sha1=want,
                           changed=have != want, steps=["download"] if have != want else [])
        if self.module._diff:
            self.result["diff"] = {"before": {"path": dest, "sha1": have}, "after": {"path": dest, "sha1": want}}
        if have == want or self.module.check_mode:
            return
        ddir = os.path.dirname(os.path.abspath(dest))
        if not os.path.isdir(ddir):
            self.fail(f"the directory of dest {dest} does not exist")
        fd, tmp = tempfile.mkstemp(prefix=".imgapi-", dir=ddir)
        os.close(fd)
        try:
            got, size, _etag = self.client.download_file(p["uuid"], tmp, timeout=float(p["transfer_timeout"]))
            if got != want:
                self.result["changed"] = False
                self.fail(f"downloaded file of image {p['uuid']} has sha1 {got} ({size} bytes); "
                          f"expected {want}; {dest} left unchanged")
            os.replace(tmp, dest)
        except ApiError as exc:
            self.result["changed"] = False
            self.api_fail(exc, f"cannot download the file of image {p['uuid']}")
        except Exception as exc:  # transport errors while streaming the body
            self.result["changed"] = False
            self.fail(f"download of image {p['uuid']} failed: {exc}; {dest} left unchanged")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def main():
    spec = triton_argument_spec("imgapi")
    spec.update(
        state=dict(type="str", default="present", choices=["present", "absent", "downloaded", "query"]),
        uuid=dict(type="str"),
        manifest=dict(type="dict"),
        manifest_path=dict(type="path"),
        file=dict(type="path"),
        compression=dict(type="str", choices=list(I.COMPRESSIONS)),
        activate=dict(type="bool", default=True),
        skip_owner_check=dict(type="bool", default=False),
        dest=dict(type="path"),
        name=dict(type="str"),
        owner=dict(type="str"),
        tags=dict(type="dict"),
        image_state=dict(type="str", default="all", choices=["active", "unactivated", "disabled", "all"]),
        transfer_timeout=dict(type="int", default=3600),
    )
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True,
                           mutually_exclusive=[("manifest", "manifest_path")])
    p = module.params
    if p["uuid"] is not None and not is_uuid(p["uuid"]):
        module.fail_json(msg=f"uuid must be an image UUID, got {p['uuid']!r}")
    if p["transfer_timeout"] <= 0:
        module.fail_json(msg="transfer_timeout must be positive")
    check_requests(module)
    runner = Runner(module)
    getattr(runner, p["state"])()
    module.exit_json(**runner.result)


if __name__ == "__main__":
    main()
