"""The lab IMGAPI (mode=dc): image manifests v2 and their files.

Endpoints and semantics: reference/triton_apis.md §2. ``action`` and the
flags are read only from the query string (IMGAPI sets mapParams:false), the
manifest only from the JSON body. Errors are IMGAPI's: 422 for validation and
state errors, 409 ImageUuidAlreadyExists, 400 Download for a bad upload.
"""
import datetime as dt
import email.utils
import os
import re
import uuid as uuidlib

from . import errors
from .server import FileBody, Response, Service

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
NIL_UUID = "00000000-0000-0000-0000-000000000000"
TYPES = ("zone-dataset", "lx-dataset", "zvol", "docker", "lxd", "other")
OSES = ("smartos", "linux", "windows", "bsd", "illumos", "other")
COMPRESSIONS = ("bzip2", "gzip", "xz", "none")
MAX_FILE_SIZE = 20 * 1024 ** 3
VERSION = "4.12.0"
BUCKET = "imgapi_images"
# Fields a client may set on create/import, with their checks.
OPTIONAL_STR = {"description": 512, "homepage": 1024, "eula": 1024, "icon": None,
                "nic_driver": None, "disk_driver": None, "cpu_type": None}
OBJECT_FIELDS = ("requirements", "tags", "traits", "users", "error")
LIST_FIELDS = ("acl", "billing_tags", "channels", "inherited_directories")
# What UpdateImage may change (IMGAPI's mutable fields).
MUTABLE = {"name", "version", "description", "homepage", "eula", "icon", "public", "type", "os",
           "acl", "requirements", "users", "billing_tags", "traits", "tags", "nic_driver",
           "disk_driver", "cpu_type", "image_size", "inherited_directories"}


def now_iso():
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def image_state(img):
    if img.get("state") in ("creating", "failed"):
        return img["state"]
    if not img.get("activated"):
        return "unactivated"
    return "disabled" if img.get("disabled") else "active"


def js_str(v):
    """A value as JavaScript's String() prints it (for tag.K=V filters)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


class Imgapi:
    def __init__(self, app):
        self.app = app
        self.store = app.store
        self.admin_uuid = str(uuidlib.uuid5(uuidlib.NAMESPACE_DNS, f"admin.{app.cfg.domain}"))
        s = self.service = Service("imgapi", f"imgapi/{VERSION}")
        s.add("GET", "/ping", self.ping)
        s.add("GET", "/images", self.list_images)
        s.add("POST", "/images", self.create_image)
        s.add("GET", "/images/:uuid", self.get_image)
        s.add("POST", "/images/:uuid", self.image_action)
        s.add("DELETE", "/images/:uuid", self.delete_image)
        s.add("PUT", "/images/:uuid/file", self.add_image_file, raw=True)
        s.add("GET", "/images/:uuid/file", self.get_image_file)
        s.add("GET", "/images/:uuid/jobs", self.list_image_jobs)

    # ---- helpers ---------------------------------------------------------------
    def serialize(self, img, admin=False):
        out = {k: v for k, v in img.items() if k not in ("activated", "files")}
        out["state"] = image_state(img)
        files = []
        for f in img.get("files", []):
            f = dict(f)
            if not admin:
                for k in ("contentMD5", "stor", "mtime"):
                    f.pop(k, None)
            files.append(f)
        out["files"] = files
        order = ["v", "uuid", "owner", "name", "version", "state", "disabled", "public",
                 "published_at", "type", "os", "files"]
        return {**{k: out[k] for k in order if k in out},
                **{k: v for k, v in out.items() if k not in order}}

    def lookup(self, uuid):
        img = self.store.get(BUCKET, uuid)
        if img is None:
            raise errors.not_found(f"image {uuid} not found")
        return img

    def get(self, uuid):
        """An image manifest or None (for SAPI/VMAPI image checks)."""
        img = self.store.get(BUCKET, uuid)
        return self.serialize(img) if img else None

    @staticmethod
    def _bool_query(req, name):
        v = req.query.get(name)
        return v is not None and v.lower() == "true"

    def validate_manifest(self, data, for_import):
        """Check a create/import body; return the stored manifest (unactivated)."""
        if not isinstance(data, dict):
            raise errors.imgapi_validation("invalid image data",
                                           [errors.field_error("manifest", "Invalid",
                                                               "the body must be a JSON object")])
        errs = []
        for k in ("name", "version", "type", "os", "owner"):
            if data.get(k) in (None, ""):
                errs.append(errors.field_error(k, "MissingParameter", f'"{k}" is required'))
        if isinstance(data.get("name"), str) and len(data["name"]) > 512:
            errs.append(errors.field_error("name", "Invalid", "must be at most 512 characters"))
        elif data.get("name") is not None and not isinstance(data["name"], str):
            errs.append(errors.field_error("name", "Invalid", "must be a string"))
        if isinstance(data.get("version"), str) and len(data["version"]) > 128:
            errs.append(errors.field_error("version", "Invalid", "must be at most 128 characters"))
        elif data.get("version") is not None and not isinstance(data["version"], str):
            errs.append(errors.field_error("version", "Invalid", "must be a string"))
        if data.get("type") not in (None, "") and data["type"] not in TYPES:
            errs.append(errors.field_error("type", "Invalid", "must be one of: " + ", ".join(TYPES)))
        if data.get("os") not in (None, "") and data["os"] not in OSES:
            errs.append(errors.field_error("os", "Invalid", "must be one of: " + ", ".join(OSES)))
        if data.get("owner") not in (None, "") and not (isinstance(data["owner"], str)
                                                         and UUID_RE.match(data["owner"])):
            errs.append(errors.field_error("owner", "Invalid", "must be a UUID"))
        if "v" in data and data["v"] not in (2, "2"):
            errs.append(errors.field_error("v", "Invalid", "only manifest version 2 is supported"))
        for k in ("public", "disabled"):
            if k in data and not isinstance(data[k], bool):
                errs.append(errors.field_error(k, "Invalid", "must be a boolean"))
        for k, mx in OPTIONAL_STR.items():
            if k in data and not isinstance(data[k], str):
                errs.append(errors.field_error(k, "Invalid", "must be a string"))
            elif k in data and mx and len(data[k]) > mx:
                errs.append(errors.field_error(k, "Invalid", f"must be at most {mx} characters"))
        for k in OBJECT_FIELDS:
            if k in data and not isinstance(data[k], dict):
                errs.append(errors.field_error(k, "Invalid", "must be an object"))
        for k in LIST_FIELDS:
            if k in data and not isinstance(data[k], list):
                errs.append(errors.field_error(k, "Invalid", "must be an array"))
        if isinstance(data.get("acl"), list):
            if not all(isinstance(a, str) and UUID_RE.match(a) for a in data["acl"]):
                errs.append(errors.field_error("acl", "Invalid", "must be an array of UUIDs"))
        if "origin" in data and not (isinstance(data["origin"], str) and UUID_RE.match(data["origin"])):
            errs.append(errors.field_error("origin", "Invalid", "must be a UUID"))
        if "published_at" in data:
            if not for_import:
                errs.append(errors.field_error("published_at", "Invalid",
                                               "may only be given on import"))
            elif not (isinstance(data["published_at"], str)
                      and re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d(\.\d+)?)?Z$",
                                   data["published_at"])):
                errs.append(errors.field_error("published_at", "Invalid",
                                               "must be an ISO 8601 UTC date"))
        if "image_size" in data and not (isinstance(data["image_size"], int)
                                         and not isinstance(data["image_size"], bool)):
            errs.append(errors.field_error("image_size", "Invalid", "must be an integer"))
        if errs:
            raise errors.imgapi_validation("invalid image data", errs)
        img = {k: v for k, v in data.items() if k not in ("state", "files", "activated", "v")}
        img["v"] = 2
        img["disabled"] = bool(data.get("disabled", False))
        img["public"] = bool(data.get("public", False))
        img["activated"] = False
        img["files"] = []
        img["state"] = "unactivated"
        if img.get("origin"):
            o = self.store.get(BUCKET, img["origin"])
            if o is None:
                raise errors.origin_does_not_exist(img["origin"])
            if image_state(o) != "active":
                raise errors.origin_not_active(img["origin"])
        return img

    def _save(self, img):
        img = dict(img)
        img["state"] = image_state(img)
        self.store.put(BUCKET, img["uuid"], img)
        return img

    # ---- endpoints ---------------------------------------------------------------
    def ping(self, req):
        return {"ping": "pong", "version": VERSION, "imgapi": True, "pid": os.getpid()}

    def list_images(self, req):
        q = req.query
        imgs = self.store.list(BUCKET)
        state = q.get("state", "active")
        if state != "all":
            if state not in ("active", "unactivated", "disabled", "creating", "failed"):
                raise errors.imgapi_invalid_parameter(
                    f'invalid "state": {state!r}',
                    [errors.field_error("state", "Invalid",
                                        "must be one of: active, unactivated, disabled, all")])
            imgs = [i for i in imgs if image_state(i) == state]
        for key in ("name", "version"):
            if key in q:
                v = q[key]
                if v.startswith("~"):
                    imgs = [i for i in imgs if v[1:] in str(i.get(key, ""))]
                else:
                    imgs = [i for i in imgs if i.get(key) == v]
        for key in ("owner", "os"):
            if key in q:
                imgs = [i for i in imgs if i.get(key) == q[key]]
        if "type" in q:
            v = q["type"]
            if v.startswith("!"):
                imgs = [i for i in imgs if i.get("type") != v[1:]]
            else:
                imgs = [i for i in imgs if i.get("type") == v]
        if "public" in q:
            want = q["public"].lower() == "true"
            imgs = [i for i in imgs if bool(i.get("public")) == want]
        if "billing_tag" in q:
            imgs = [i for i in imgs if q["billing_tag"] in (i.get("billing_tags") or [])]
        if "account" in q:
            acct = q["account"]
            imgs = [i for i in imgs if i.get("public") or i.get("owner") == acct
                    or acct in (i.get("acl") or [])]
        for k, v in q.items():
            if k.startswith("tag."):
                tk = k[4:]
                imgs = [i for i in imgs if tk in (i.get("tags") or {})
                        and js_str(i["tags"][tk]) == v]
        sort = q.get("sort", "published_at")
        field, _, direction = sort.partition(".")
        if field not in ("published_at", "name", "version", "owner", "type", "os", "uuid") or \
                direction not in ("", "asc", "desc"):
            raise errors.imgapi_invalid_parameter(
                f'invalid "sort": {sort!r}',
                [errors.field_error("sort", "Invalid",
                                    "must be <field>[.asc|.desc] with field one of published_at, "
                                    "name, version, owner, type, os, uuid")])
        # Moray is PostgreSQL: NULLs (unpublished images) last ascending, first descending.
        imgs.sort(key=lambda i: (i.get(field) is None, str(i.get(field) or ""), i["uuid"]),
                  reverse=direction == "desc")
        if "marker" in q:
            ids = [i["uuid"] for i in imgs]
            if q["marker"] in ids:
                imgs = imgs[ids.index(q["marker"]) + 1:]
        if "limit" in q:
            try:
                limit = int(q["limit"])
                if not 1 <= limit <= 1000:
                    raise ValueError
            except ValueError:
                raise errors.imgapi_invalid_parameter(
                    f'invalid "limit": {q["limit"]!r}',
                    [errors.field_error("limit", "Invalid", "must be an integer from 1 to 1000")]
                ) from None
            imgs = imgs[:limit]
        admin = self._bool_query(req, "inclAdminFields")
        return [self.serialize(i, admin) for i in imgs]

    def get_image(self, req, uuid):
        img = self.lookup(uuid)
        acct = req.query.get("account")
        if acct and not (img.get("public") or img.get("owner") == acct
                         or acct in (img.get("acl") or [])):
            raise errors.not_found(f"image {uuid} not found")
        return self.serialize(img, self._bool_query(req, "inclAdminFields"))

    def create_image(self, req):
        body = req.json()
        if isinstance(body, dict) and "owner" not in body and req.query.get("account"):
            body = {**body, "owner": req.query["account"]}
        if isinstance(body, dict) and "uuid" in body:
            raise errors.imgapi_invalid_parameter(
                'CreateImage does not take a "uuid"; import with POST /images/<uuid>?action=import',
                [errors.field_error("uuid", "Invalid", "not allowed on CreateImage")])
        img = self.validate_manifest(body, for_import=False)
        img["uuid"] = str(uuidlib.uuid4())
        with self.store.tx():
            img = self._save(img)
        return self.serialize(img)

    def image_action(self, req, uuid):
        action = req.query.get("action")
        if not action:
            raise errors.imgapi_invalid_parameter(
                'no image "action" was specified',
                [errors.field_error("action", "MissingParameter", '"action" is required')])
        fn = {"import": self._import, "activate": self._activate, "enable": self._enable,
              "disable": self._disable, "update": self._update,
              "import-remote": self._import_remote}.get(action)
        if fn is None:
            raise errors.imgapi_invalid_parameter(
                f'"{action}" is not a valid image action',
                [errors.field_error("action", "Invalid",
                                    "must be one of: import, activate, enable, disable, update, "
                                    "import-remote")])
        return fn(req, uuid)

    def _import(self, req, uuid):
        if req.query.get("account"):
            raise errors.operator_only()
        if req.query.get("source"):
            raise errors.remote_source(
                f"the lab IMGAPI cannot reach remote source {req.query['source']}: "
                "import the manifest and add the file instead")
        if not UUID_RE.match(uuid):
            raise errors.imgapi_invalid_parameter(
                f'invalid image uuid "{uuid}"', [errors.field_error("uuid", "Invalid")])
        body = req.json()
        if isinstance(body, dict) and body.get("uuid") != uuid:
            raise errors.imgapi_invalid_parameter(
                f'image uuid in the body ({body.get("uuid")}) does not match the path ({uuid})',
                [errors.field_error("uuid", "Invalid", "must equal the uuid in the path")])
        img = self.validate_manifest(body, for_import=True)
        img["uuid"] = uuid
        if img.get("owner") == NIL_UUID:
            img["owner"] = self.admin_uuid
        with self.store.tx():
            old = self.store.get(BUCKET, uuid)
            if old is not None and old.get("state") != "creating":
                raise errors.image_uuid_exists(uuid)
            img = self._save(img)
        return self.serialize(img)

    def _import_remote(self, req, uuid):
        raise errors.remote_source("the lab IMGAPI has no remote sources: "
                                   "use AdminImportImage, AddImageFile and ActivateImage")

    def _activate(self, req, uuid):
        with self.store.tx():
            img = self.lookup(uuid)
            if img.get("activated"):
                raise errors.image_already_activated(uuid)
            if not img.get("files"):
                raise errors.no_activation_no_file(uuid)
            img["activated"] = True
            img.setdefault("published_at", now_iso())
            img = self._save(img)
        return self.serialize(img)

    def _enable(self, req, uuid):
        with self.store.tx():
            img = self.lookup(uuid)
            img["disabled"] = False
            img = self._save(img)
        return self.serialize(img)

    def _disable(self, req, uuid):
        with self.store.tx():
            img = self.lookup(uuid)
            img["disabled"] = True
            img = self._save(img)
        return self.serialize(img)

    def _update(self, req, uuid):
        body = req.json()
        if not isinstance(body, dict) or not body:
            raise errors.imgapi_validation("invalid image update data",
                                           [errors.field_error("body", "Invalid",
                                                               "give a JSON object of fields")])
        bad = sorted(k for k in body if k not in MUTABLE)
        if bad:
            raise errors.imgapi_validation(
                "invalid image update data",
                [errors.field_error(k, "NotAllowed", f'"{k}" cannot be updated') for k in bad])
        with self.store.tx():
            img = self.lookup(uuid)
            merged = {**{k: v for k, v in img.items() if k not in ("uuid",)}, **body}
            merged.pop("published_at", None)
            check = self.validate_manifest(merged, for_import=False)  # same field rules
            del check
            img.update(body)
            img = self._save(img)
        return self.serialize(img)

    def delete_image(self, req, uuid):
        with self.store.tx():
            self.lookup(uuid)
            deps = [i["uuid"] for i in self.store.list(BUCKET) if i.get("origin") == uuid]
            if deps:
                raise errors.image_has_dependents(uuid, deps)
            self.store.delete(BUCKET, uuid)
        self.store.delete_files(uuid)
        return Response(204)

    def add_image_file(self, req, uuid):
        img = self.lookup(uuid)
        if img.get("activated"):
            raise errors.image_files_immutable(uuid)
        comp = req.query.get("compression")
        if comp not in COMPRESSIONS:
            raise errors.imgapi_invalid_parameter(
                f'invalid "compression": {comp!r}' if comp else '"compression" is required',
                [errors.field_error("compression", "Invalid" if comp else "MissingParameter",
                                    "must be one of: " + ", ".join(COMPRESSIONS))])
        storage = req.query.get("storage", "local")
        if storage not in ("local", "manta"):
            raise errors.imgapi_invalid_parameter(
                f'invalid "storage": {storage!r}',
                [errors.field_error("storage", "Invalid", "must be local or manta")])
        want_len = req.content_length
        try:
            tmp, size, sha1, md5 = self.store.receive_file(uuid, req.iter_body(), MAX_FILE_SIZE)
        except ValueError as exc:
            req._h.close_connection = True
            raise errors.download_error(str(exc)) from None
        try:
            if size == 0:
                raise errors.download_error("image file is empty (0 bytes)")
            if want_len is not None and want_len != size:
                raise errors.download_error(
                    f"Content-Length {want_len} does not match the {size} bytes received")
            if req.query.get("sha1") and req.query["sha1"] != sha1:
                raise errors.download_error(
                    f"file sha1 mismatch: expected {req.query['sha1']}, got {sha1}")
            entry = {"sha1": sha1, "size": size, "compression": comp}
            if req.query.get("dataset_guid"):
                entry["dataset_guid"] = req.query["dataset_guid"]
            entry.update({"contentMD5": md5, "stor": "local", "mtime": now_iso()})
            with self.store.tx():
                img = self.lookup(uuid)
                if img.get("activated"):
                    raise errors.image_files_immutable(uuid)
                self.store.commit_file(uuid, tmp)
                img["files"] = [entry]
                img = self._save(img)
        finally:
            self.store.drop_tmp(tmp)
        return self.serialize(img)

    def get_image_file(self, req, uuid):
        img = self.lookup(uuid)
        idx = req.query.get("index", "0")
        if idx != "0":
            raise errors.imgapi_invalid_parameter(
                f'invalid "index": {idx!r}', [errors.field_error("index", "Invalid",
                                                                 "only index 0 exists")])
        if not img.get("files"):
            raise errors.not_found(f"image {uuid} has no file")
        f = img["files"][0]
        path = self.store.image_file(uuid)
        if not path.exists():
            raise errors.internal(f"image {uuid}: file missing from storage")
        mtime = dt.datetime.strptime(f.get("mtime", now_iso()), "%Y-%m-%dT%H:%M:%S.%fZ")
        headers = {"Content-Type": "application/octet-stream", "Etag": f["sha1"],
                   "Content-MD5": f.get("contentMD5", ""),
                   "Last-Modified": email.utils.format_datetime(
                       mtime.replace(tzinfo=dt.timezone.utc), usegmt=True)}
        return Response(200, FileBody(path, f["size"]), headers)

    def list_image_jobs(self, req, uuid):
        self.lookup(uuid)
        return []
