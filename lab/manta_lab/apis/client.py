"""A tiny client of the lab's SAPI, IMGAPI and VMAPI, for the lab's own use.

    from manta_lab.apis.client import Sapi, Imgapi, Vmapi
    sapi = Sapi(cfg)
    app = sapi.get_app("manta")
    sapi.update_metadata(app["uuid"], {"HASH_RING_IMAGE": img})

The collection's production clients live in plugins/module_utils; this one
only exists so lab components (bootstrap, ring, storage, ...) need no extra
dependency. Errors raise ApiClientError (a LabError) carrying the status,
the restify ``code`` and ``message``.
"""
import hashlib
import json
import time
import urllib.error
import urllib.parse
import urllib.request

from ..config import LabError


class ApiClientError(LabError):
    def __init__(self, component, method, url, status, body):
        self.status = status
        self.body = body if isinstance(body, dict) else {"message": str(body)}
        self.code = self.body.get("code")
        msg = f"{method} {url} -> {status} {self.code or ''}: {self.body.get('message', '')}"
        if self.body.get("errors"):
            msg += " " + json.dumps(self.body["errors"])
        super().__init__(component, msg)


class Client:
    name = "api"
    headers = {}

    def __init__(self, cfg_or_url, timeout=60):
        self.url = (cfg_or_url if isinstance(cfg_or_url, str)
                    else cfg_or_url.url(self.name)).rstrip("/")
        self.timeout = timeout

    def request(self, method, path, body=None, query=None, data=None, ctype=None,
                timeout=None, raw=False):
        url = self.url + path
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        headers = {"Accept": "application/json", **self.headers}
        payload = None
        if data is not None:
            payload = data
            headers["Content-Type"] = ctype or "application/octet-stream"
        elif body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=payload, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                content = resp.read()
                if raw:
                    return content
                return json.loads(content) if content else None
        except urllib.error.HTTPError as exc:
            content = exc.read()
            try:
                parsed = json.loads(content) if content else {}
            except ValueError:
                parsed = {"message": content.decode("utf-8", "replace")}
            raise ApiClientError(self.name, method, url, exc.code, parsed) from None
        except (urllib.error.URLError, OSError) as exc:
            raise LabError(self.name, f"{method} {url}: {exc}") from None

    def get_or_none(self, path, **kw):
        try:
            return self.request("GET", path, **kw)
        except ApiClientError as exc:
            if exc.status == 404:
                return None
            raise

    def ping(self):
        return self.request("GET", "/ping", timeout=5)


class Sapi(Client):
    name = "sapi"
    headers = {"Accept-Version": "~2"}

    def get_app(self, name="manta"):
        apps = self.request("GET", "/applications", query={"name": name, "include_master": "true"})
        return apps[0] if apps else None

    def list_services(self, **filters):
        return self.request("GET", "/services", query={**filters, "include_master": "true"})

    def get_service(self, name, application_uuid):
        svcs = self.list_services(name=name, application_uuid=application_uuid)
        return svcs[0] if svcs else None

    def list_instances(self, **filters):
        return self.request("GET", "/instances", query={**filters, "include_master": "true"})

    def get_instance(self, uuid):
        return self.get_or_none(f"/instances/{uuid}")

    def create_instance(self, body, async_=False, timeout=3600):
        return self.request("POST", "/instances", body=body,
                            query={"async": "true"} if async_ else None, timeout=timeout)

    def delete_instance(self, uuid, timeout=600):
        return self.request("DELETE", f"/instances/{uuid}", timeout=timeout)

    def upgrade_instance(self, uuid, image_uuid, timeout=3600):
        return self.request("PUT", f"/instances/{uuid}/upgrade", body={"image_uuid": image_uuid},
                            timeout=timeout)

    def update(self, kind, uuid, action="update", **fields):
        """PUT /<kind>s/<uuid> with {action, params|metadata|manifests...}."""
        return self.request("PUT", f"/{kind}s/{uuid}", body={"action": action, **fields})

    def update_metadata(self, uuid, metadata, action="update", kind="application"):
        return self.update(kind, uuid, action=action, metadata=metadata)

    def get_config(self, uuid):
        return self.request("GET", f"/configs/{uuid}")


class Imgapi(Client):
    name = "imgapi"

    def get_image(self, uuid):
        return self.get_or_none(f"/images/{uuid}")

    def list_images(self, **filters):
        return self.request("GET", "/images", query=filters)

    def import_image(self, manifest, data, compression="gzip"):
        """AdminImportImage + AddImageFile + ActivateImage, resuming where a
        previous attempt stopped (the idempotent import of §2.4)."""
        uuid = manifest["uuid"]
        sha1 = hashlib.sha1(data).hexdigest()
        img = self.get_image(uuid)
        if img is None:
            img = self.request("POST", f"/images/{uuid}", body=manifest,
                               query={"action": "import", "skip_owner_check": "true"})
        if img["state"] == "unactivated":
            if not img["files"] or img["files"][0]["sha1"] != sha1:
                self.request("PUT", f"/images/{uuid}/file", data=data,
                             query={"compression": compression, "sha1": sha1})
            img = self.request("POST", f"/images/{uuid}", query={"action": "activate"})
        return img

    def get_file(self, uuid):
        return self.request("GET", f"/images/{uuid}/file", raw=True)


class Vmapi(Client):
    name = "vmapi"

    def get_vm(self, uuid):
        return self.get_or_none(f"/vms/{uuid}")

    def list_vms(self, **filters):
        return self.request("GET", "/vms", query=filters)

    def put_vm(self, uuid, vm):
        return self.request("PUT", f"/vms/{uuid}", body=vm)

    def action(self, uuid, action, body=None, **query):
        return self.request("POST", f"/vms/{uuid}", body=body, query={"action": action, **query})

    def get_job(self, uuid):
        return self.request("GET", f"/jobs/{uuid}")

    def wait_job(self, uuid, timeout=3600):
        deadline = time.monotonic() + timeout
        while True:
            job = self.get_job(uuid)
            if job["execution"] in ("succeeded", "failed", "canceled"):
                return job
            if time.monotonic() > deadline:
                raise LabError("vmapi", f"job {uuid} still {job['execution']} after {timeout}s")
            time.sleep(0.2)
