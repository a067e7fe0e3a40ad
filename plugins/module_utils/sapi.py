# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""SAPI client and the pure logic around SAPI objects (reference/triton_apis.md §1).

* :class:`SapiClient`: applications, services, instances; ``Accept-Version: ~2``.
* Metadata edits computed on the client (SAPI never says whether a PUT
  changed anything): :func:`apply_update`, :func:`apply_delete`,
  :func:`changed_keys`, :func:`cas_conflicts`, :func:`redact`.
* Instance matching for idempotent create / find: :func:`instance_matches`.
"""
from __future__ import annotations

import copy
import re

from ansible_collections.manta.ops.plugins.module_utils.http_api import ApiClient, ApiError

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
KINDS = ("application", "service", "instance")
ACTIONS = ("update", "replace", "delete")
# Metadata keys whose values never reach module output (diff or result).
SENSITIVE_KEY_RE = re.compile(r"(^|_)(PW|PASSWD|PASSWORD|SECRET|TOKEN|PRIVATE_KEY|CREDENTIALS?)$", re.I)
REDACTED = "********"
# Where sapi_instance records "reprovisioned under marker M" (instance metadata).
DEFAULT_MARKER_KEY = "MANTA_OPS_REPROVISION"


def is_uuid(value):
    return isinstance(value, str) and bool(UUID_RE.match(value))


# ------------------------------------------------------------------ pure logic
MISSING = object()  # sentinel: "key absent", distinct from a JSON null


def apply_update(current, changes):
    """SAPI ``action=update``: a shallow per-key merge. The new value of a key
    replaces the old one whole (no deep merge)."""
    out = dict(current or {})
    for key, value in (changes or {}).items():
        out[key] = copy.deepcopy(value)
    return out


def apply_delete(current, keys):
    """SAPI ``action=delete``: remove each key (values are ignored)."""
    out = dict(current or {})
    for key in keys or ():
        out.pop(key, None)
    return out


def changed_keys(before, after):
    """Sorted keys whose presence or value differs between two maps."""
    before = before or {}
    after = after or {}
    return sorted(k for k in set(before) | set(after)
                  if before.get(k, MISSING) != after.get(k, MISSING))


def subset(mapping, keys):
    """``{k: mapping[k]}`` for the keys present in mapping."""
    return {k: mapping[k] for k in keys if k in (mapping or {})}


def redact(mapping):
    """A copy of ``mapping`` with the values of secret-looking keys masked
    (``UFDS_ROOT_PW``, ``*_PASSWORD``, ``*_TOKEN``...)."""
    if not isinstance(mapping, dict):
        return mapping
    return {k: (REDACTED if SENSITIVE_KEY_RE.search(str(k)) else v) for k, v in mapping.items()}


def key_diff(before, after, keys=None):
    """``{"before": {...}, "after": {...}}`` restricted to the keys that change
    (or to ``keys``), with secrets masked. Absent keys are left out."""
    keys = changed_keys(before, after) if keys is None else sorted(keys)
    return {"before": redact(subset(before or {}, keys)), "after": redact(subset(after or {}, keys))}


def cas_conflicts(current, expected, desired=None, deleting=()):
    """Compare-and-swap check. ``expected`` maps key -> the value the key must
    still hold (``None`` = the key must be absent). A key that already holds
    its ``desired`` value (or, for a key in ``deleting``, is already gone) is
    not a conflict: the swap already happened. Returns a list of
    ``(key, expected, found)`` for every key whose guard is lost (``found``
    is None for an absent key)."""
    current = current or {}
    desired = desired or {}
    lost = []
    for key, want in (expected or {}).items():
        present = key in current
        found = current.get(key)
        if key in desired and present and found == desired[key]:
            continue
        if key in deleting and not present:
            continue
        ok = (not present) if want is None else (present and found == want)
        if not ok:
            lost.append((key, want, found if present else None))
    return lost


def describe_conflicts(lost):
    parts = []
    for key, want, found in lost:
        w = "absent" if want is None else repr(want)
        f = "absent" if found is None else repr(found)
        if SENSITIVE_KEY_RE.search(str(key)):
            w = f = REDACTED
        parts.append(f"{key}: expected {w}, found {f}")
    return "; ".join(parts)


def tags_of(instance):
    return ((instance or {}).get("params") or {}).get("tags") or {}


def instance_matches(instance, shard=None, tags=None, server_uuid=None, vm=None):
    """Does a SAPI instance match the find criteria?

    * ``shard``: ``metadata.SHARD`` compared as strings (SHARD is "1" or 1);
    * ``tags``: every given tag equals ``params.tags[k]`` (string compare);
    * ``server_uuid``: the VMAPI ``vm.server_uuid`` when ``vm`` is given
      (SAPI params go stale after a migration, MANTA-3604), otherwise
      ``params.server_uuid``.
    """
    meta = instance.get("metadata") or {}
    if shard is not None and str(meta.get("SHARD")) != str(shard):
        return False
    itags = tags_of(instance)
    for k, v in (tags or {}).items():
        if k not in itags or str(itags[k]) != str(v):
            return False
    if server_uuid is not None:
        actual = (vm or {}).get("server_uuid") if vm else (instance.get("params") or {}).get("server_uuid")
        if actual != server_uuid:
            return False
    return True


def instance_view(instance, vm=None):
    """A compact, secret-free view of an instance for results and diffs."""
    if instance is None:
        return None
    params = instance.get("params") or {}
    view = {
        "uuid": instance.get("uuid"),
        "service_uuid": instance.get("service_uuid"),
        "alias": params.get("alias"),
        "server_uuid": (vm or {}).get("server_uuid") or params.get("server_uuid"),
        "image_uuid": (vm or {}).get("image_uuid") or params.get("image_uuid"),
        "tags": tags_of(instance),
        "shard": (instance.get("metadata") or {}).get("SHARD"),
        "type": instance.get("type"),
    }
    if vm:
        view["vm_state"] = vm.get("state")
    return view


def format_alias(template, uuid, **values):
    """Expand ``{uuid}``/``{uuid8}`` (and any extra ``values``) in an alias."""
    try:
        return template.format(uuid=uuid, uuid8=uuid[:8], **values)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"alias template {template!r}: {exc}; valid placeholders: {{uuid}}, {{uuid8}}"
                         + "".join(f", {{{k}}}" for k in values)) from None


# ------------------------------------------------------------------ client
class SapiClient(ApiClient):
    service = "SAPI"
    extra_headers = {"Accept-Version": "~2"}

    @staticmethod
    def path(kind, uuid=None):
        if kind not in KINDS:
            raise ValueError(f"SAPI object kind must be one of {', '.join(KINDS)}, got {kind!r}")
        return f"/{kind}s" + (f"/{uuid}" if uuid else "")

    # ----------------------------------------------------------- reads
    def get_object(self, kind, uuid):
        return self.get(self.path(kind, uuid))

    def get_object_or_none(self, kind, uuid):
        return self.get_or_none(self.path(kind, uuid))

    def _list(self, path, **filters):
        """GET a collection, master objects included, with the filters that are set."""
        params = {"include_master": "true"}
        params.update({k: v for k, v in filters.items() if v})
        return self.get_list(path, params=params)

    def list_applications(self, name=None, owner_uuid=None):
        return self._list("/applications", name=name, owner_uuid=owner_uuid)

    def list_services(self, name=None, application_uuid=None):
        return self._list("/services", name=name, application_uuid=application_uuid)

    def list_instances(self, service_uuid=None):
        return self._list("/instances", service_uuid=service_uuid)

    def find_application(self, ident):
        """An application by uuid or name; None when absent. More than one
        application with the name is an error."""
        if is_uuid(ident):
            return self.get_object_or_none("application", ident)
        apps = [a for a in self.list_applications(name=ident) if a.get("name") == ident]
        if len(apps) > 1:
            raise LookupError(f"{len(apps)} SAPI applications are named {ident!r} "
                              f"({', '.join(a['uuid'] for a in apps)}); give the uuid")
        return apps[0] if apps else None

    def find_service(self, ident, application_uuid=None):
        if is_uuid(ident):
            svc = self.get_object_or_none("service", ident)
            if svc and application_uuid and svc.get("application_uuid") != application_uuid:
                raise LookupError(f"SAPI service {ident} belongs to application "
                                  f"{svc.get('application_uuid')}, not {application_uuid}")
            return svc
        svcs = [s for s in self.list_services(name=ident, application_uuid=application_uuid)
                if s.get("name") == ident
                and (not application_uuid or s.get("application_uuid") == application_uuid)]
        if len(svcs) > 1:
            raise LookupError(f"{len(svcs)} SAPI services are named {ident!r} "
                              f"({', '.join(s['uuid'] for s in svcs)}); give the application or the uuid")
        return svcs[0] if svcs else None

    def whatis(self, uuid):
        """(kind, object) for a uuid of unknown kind, as sdc-clients does:
        application, then service, then instance. (None, None) if none."""
        for kind in KINDS:
            obj = self.get_object_or_none(kind, uuid)
            if obj is not None:
                return kind, obj
        return None, None

    def resolve(self, application=None, service=None, instance=None, uuid=None, kind=None):
        """Find the object a module option set points at. Returns
        ``(kind, obj)``; raises LookupError with a clear message if absent."""
        if uuid:
            if not is_uuid(uuid):
                raise LookupError(f"uuid must be a UUID, got {uuid!r}")
            if kind:
                obj = self.get_object_or_none(kind, uuid)
                if obj is None:
                    raise LookupError(f"no SAPI {kind} {uuid}")
                return kind, obj
            k, obj = self.whatis(uuid)
            if obj is None:
                raise LookupError(f"no SAPI application, service or instance has uuid {uuid}")
            return k, obj
        if instance:
            if not is_uuid(instance):
                raise LookupError(f"instance must be an instance UUID, got {instance!r}")
            obj = self.get_object_or_none("instance", instance)
            if obj is None:
                raise LookupError(f"no SAPI instance {instance}")
            return "instance", obj
        app = None
        if application:
            app = self.find_application(application)
            if app is None:
                raise LookupError(f"no SAPI application {application!r}")
        if service:
            svc = self.find_service(service, app["uuid"] if app else None)
            if svc is None:
                raise LookupError(f"no SAPI service {service!r}"
                                  + (f" in application {application!r}" if app else ""))
            return "service", svc
        if app is not None:
            return "application", app
        raise LookupError("nothing to act on: give application, service, instance or uuid")

    # ----------------------------------------------------------- writes
    def update(self, kind, uuid, action="update", metadata=None, params=None, master=False):
        if action not in ACTIONS:
            raise ValueError(f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
        body = {"action": action}
        if metadata is not None:
            body["metadata"] = metadata
        if params is not None:
            body["params"] = params
        if master:
            body["master"] = True
        return self.request("PUT", self.path(kind, uuid), body=body, expect=(200,))

    def create_instance(self, body, async_=False, timeout=None):
        query = {"async": "true"} if async_ else None
        # Not retried: a POST that timed out may have created the instance;
        # the module re-finds by uuid instead.
        return self.request("POST", "/instances", params=query, body=body, expect=(200, 201, 204),
                            timeout=timeout, idempotent=False)

    def upgrade_instance(self, uuid, image_uuid, timeout=None):
        return self.request("PUT", f"/instances/{uuid}/upgrade", body={"image_uuid": image_uuid},
                            expect=(200, 204), timeout=timeout, idempotent=False)

    def delete_instance(self, uuid, timeout=None):
        try:
            self.request("DELETE", f"/instances/{uuid}", expect=(200, 204), timeout=timeout,
                         idempotent=False)
        except ApiError as exc:
            if exc.not_found:
                return False
            raise
        return True
