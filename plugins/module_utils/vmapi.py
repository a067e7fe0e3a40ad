# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""VMAPI client: VMs, VM actions and workflow jobs (reference/triton_apis.md §3).

Every VM action (``POST /vms/:uuid?action=...``) answers ``202
{vm_uuid, job_uuid}``: the job is accepted, not finished. :func:`wait_job`
implements the canonical polling loop (GET ``/jobs/:uuid`` every
``interval`` seconds until ``execution`` is succeeded/failed/canceled,
tolerating a few transient GET errors) and reports the last
``chain_results[].error`` on failure.
"""
from __future__ import annotations

import time

from ansible_collections.manta.ops.plugins.module_utils.http_api import ApiClient, ApiError

TERMINAL = ("succeeded", "failed", "canceled")
POWER_ACTIONS = ("start", "stop", "reboot")
# Which VM state a power action needs (the job fails otherwise, unless
# idempotent=true) and which state it leaves behind.
ACTION_FROM = {"start": "stopped", "stop": "running", "reboot": "running"}
ACTION_TO = {"start": "running", "stop": "stopped", "reboot": "running"}
TRANSITIONAL = ("provisioning", "stopping", "shutting_down", "ready", "configured",
                "receiving", "incomplete")


class JobError(Exception):
    """A VMAPI job that failed, was canceled, or did not finish in time."""

    def __init__(self, message, job=None, timed_out=False):
        super().__init__(message)
        self.job = job
        self.timed_out = timed_out


def job_error(job):
    """The error text of a finished job: the last ``chain_results`` entry with
    an error (``.message`` if it is an object, else the string)."""
    results = (job or {}).get("chain_results") or []
    for res in reversed(results):
        err = res.get("error") if isinstance(res, dict) else None
        if not err:
            continue
        if isinstance(err, dict):
            return err.get("message") or err.get("name") or str(err)
        return str(err)
    return None


def job_summary(job):
    """A compact, JSON-safe view of a job for module results."""
    if not job:
        return None
    params = job.get("params") or {}
    return {
        "uuid": job.get("uuid"),
        "name": job.get("name"),
        "execution": job.get("execution"),
        "task": params.get("task"),
        "vm_uuid": params.get("vm_uuid"),
        "created_at": job.get("created_at"),
        "error": job_error(job),
    }


class VmapiClient(ApiClient):
    service = "VMAPI"

    # ---------------------------------------------------------------- VMs
    def get_vm(self, uuid):
        return self.get(f"/vms/{uuid}")

    def get_vm_or_none(self, uuid):
        return self.get_or_none(f"/vms/{uuid}")

    def list_vms(self, **filters):
        return self.get_list("/vms", params={k: v for k, v in filters.items() if v is not None})

    def action(self, uuid, action, body=None, **query):
        """POST /vms/:uuid?action=<action>; returns the 202 body {vm_uuid, job_uuid}."""
        params = {"action": action}
        params.update({k: v for k, v in query.items() if v is not None})
        res = self.request("POST", f"/vms/{uuid}", params=params, body=body if body is not None else {},
                           expect=(200, 202))
        if not isinstance(res, dict) or not res.get("job_uuid"):
            raise ApiError(self.service, "POST", f"/vms/{uuid}?action={action}", status=202,
                           code="MalformedResponse",
                           api_message=f"no job_uuid in the answer: {res!r}",
                           expected="202 {vm_uuid, job_uuid}")
        return res

    def update_vm(self, uuid, changes):
        return self.action(uuid, "update", body=changes)

    # ---------------------------------------------------------------- jobs
    def get_job(self, job_uuid):
        return self.get(f"/jobs/{job_uuid}")

    def list_vm_jobs(self, uuid, task=None, execution=None):
        return self.get_list(f"/vms/{uuid}/jobs",
                             params={k: v for k, v in (("task", task), ("execution", execution)) if v})

    def wait_job(self, job_uuid, timeout=3600, interval=5.0, max_transient=5,
                 sleep=time.sleep, clock=time.monotonic):
        """Poll ``/jobs/:uuid`` until it finishes. Returns the job when it
        succeeded; raises :class:`JobError` when it failed, was canceled or
        did not finish within ``timeout`` seconds."""
        deadline = clock() + timeout
        transient = 0
        job = None
        while True:
            try:
                job = self.get_job(job_uuid)
                transient = 0
            except ApiError as exc:
                if exc.not_found or (exc.status is not None and exc.status < 500):
                    raise
                transient += 1
                if transient > max_transient:
                    raise
            if job is not None and not isinstance(job, dict):
                raise ApiError(self.service, "GET", f"/jobs/{job_uuid}", status=200,
                               code="MalformedResponse", api_message=f"not a job object: {job!r}",
                               expected="a job object")
            execution = (job or {}).get("execution")
            if execution in TERMINAL:
                if execution == "succeeded":
                    return job
                err = job_error(job) or "(no error recorded in chain_results)"
                raise JobError(f"VMAPI job {job_uuid} ({job.get('name')}) {execution}: {err}", job=job)
            if clock() >= deadline:
                raise JobError(f"VMAPI job {job_uuid} still {execution or 'unknown'} after {timeout:g}s "
                               "(expected succeeded, failed or canceled)", job=job, timed_out=True)
            sleep(min(interval, max(0.0, deadline - clock())) or interval)
