# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Reprovision a SAPI instance onto an image at most once (reference/triton_apis.md §1, §3).

SAPI's ``PUT /instances/:uuid/upgrade`` says nothing about whether the instance
was already reprovisioned, so idempotence needs a record. With a *marker* (a
name for "this reprovision", e.g. ``<plan>-primary``) the instance metadata key
``marker_key`` holds::

    {"marker": M, "state": "pending"|"done"|"failed", "image_uuid": ...,
     "started_at": ..., "finished_at": ..., "prior_jobs": [...], "error": ...}

* ``done`` for the same marker: nothing to do.
* ``pending`` for the same marker: an earlier run was interrupted between
  writing ``pending`` and ``done``. VMAPI's reprovision jobs of the VM that are
  not in ``prior_jobs`` (the ones that existed before that run) tell whether it
  happened (:func:`judge_pending`): succeeded, done; still running, wait for it;
  otherwise reprovision again.
* anything else (no record, another marker, ``failed``): reprovision.

Without a marker, the VM's current image decides (needs VMAPI).

:func:`decide`, :func:`judge_pending` and the record helpers are pure;
:func:`reprovision` runs the whole sequence with a SAPI and (optional) VMAPI
client and raises :class:`ReprovisionError` / :class:`ReprovisionApiError`
carrying the partial result, so any module or role can reuse it.
"""
from __future__ import annotations

import datetime

from ansible_collections.manta.ops.plugins.module_utils import vmapi as V
from ansible_collections.manta.ops.plugins.module_utils.http_api import ApiError
from ansible_collections.manta.ops.plugins.module_utils.sapi import DEFAULT_MARKER_KEY

SKIP, RESOLVE, RUN = "skip", "resolve", "run"


class ReprovisionError(Exception):
    """The reprovision cannot go on; ``extra`` holds result keys (e.g. ``job``)."""

    def __init__(self, msg, result=None, **extra):
        super().__init__(msg)
        self.result = result or {}
        self.extra = extra


class ReprovisionApiError(Exception):
    """An API call failed while ``what``; ``cause`` is the ApiError."""

    def __init__(self, what, cause, result=None):
        super().__init__(f"{what}: {cause}")
        self.what = what
        self.cause = cause
        self.result = result or {}


def now_iso():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def trim_message(msg, keep=2):
    """SAPI provision/reprovision errors carry a whole job log: keep the
    first and last lines."""
    lines = [ln for ln in (msg or "").splitlines() if ln.strip()]
    if len(lines) <= 2 * keep:
        return msg
    return "\n".join(lines[:keep] + [f"... ({len(lines) - 2 * keep} lines) ..."] + lines[-keep:])


# ---- pure logic -----------------------------------------------------------------------

def read_marker(instance, key=DEFAULT_MARKER_KEY):
    """The marker record in an instance's metadata (None when absent or not a record)."""
    record = ((instance or {}).get("metadata") or {}).get(key)
    return record if isinstance(record, dict) else None


def current_image(instance, vm=None):
    """The image the instance runs: VMAPI's view first, SAPI's params otherwise."""
    return (vm or {}).get("image_uuid") or ((instance or {}).get("params") or {}).get("image_uuid")


def decide(marker, record, cur_image, image_uuid):
    """SKIP (already done), RESOLVE (our marker is pending: find out) or RUN."""
    if marker:
        if record and record.get("marker") == marker:
            if record.get("state") == "done":
                return SKIP
            if record.get("state") == "pending":
                return RESOLVE
        return RUN
    return SKIP if cur_image == image_uuid else RUN


def pending_record(marker, image_uuid, started_at=None):
    return {"marker": marker, "state": "pending", "image_uuid": image_uuid,
            "started_at": started_at or now_iso()}


def finished(record, state="done", **extra):
    """``record`` moved to a final state, stamped with ``finished_at``."""
    return dict(record, state=state, finished_at=now_iso(), **extra)


def judge_pending(record, jobs):
    """What became of the interrupted run that wrote the pending ``record``.

    ``jobs``: the VM's reprovision jobs now. Returns ``("done", job)`` when a job
    started by that run succeeded, ``("wait", job)`` when one is still running,
    ``("redo", None)`` otherwise (including when the run could not record which
    jobs existed before it: ``prior_jobs`` is None).
    """
    prior = record.get("prior_jobs")
    if prior is None:
        return "redo", None
    prior = set(prior)
    ours = [j for j in jobs if j.get("uuid") not in prior
            and (j.get("params") or {}).get("image_uuid", record.get("image_uuid")) == record.get("image_uuid")]
    ours.sort(key=lambda j: j.get("created_at") or "")
    for job in reversed(ours):
        if job.get("execution") == "succeeded":
            return "done", job
        if job.get("execution") not in V.TERMINAL:
            return "wait", job
    return "redo", None


# ---- the sequence ---------------------------------------------------------------------

def reprovision(sapi, vmapi, instance, image_uuid, marker=None, marker_key=DEFAULT_MARKER_KEY,
                vm=None, check_mode=False, wait_timeout=3600, poll_interval=5.0):
    """Reprovision ``instance`` onto ``image_uuid`` unless it already was (see module doc).

    ``vmapi`` may be None when a marker is given (an interrupted run then
    cannot be resolved). Returns ``{"changed", "before", "after", "marker",
    "resolved_pending"}`` where before/after are ``{"image_uuid", "marker"}``.
    Raises ReprovisionError / ReprovisionApiError with ``result`` set to what
    was decided so far (``changed`` true once anything may have changed).
    """
    uuid = instance["uuid"]
    cur_image = current_image(instance, vm)
    record = read_marker(instance, marker_key)
    action = decide(marker, record, cur_image, image_uuid)
    before = {"image_uuid": cur_image, "marker": record}
    out = {"changed": False, "before": before, "after": before, "marker": record,
           "resolved_pending": False}
    if action == SKIP:
        return out

    pending = pending_record(marker, image_uuid)
    done = dict(pending, state="done")
    out.update(changed=True, marker=done if marker else None,
               after={"image_uuid": image_uuid, "marker": done if marker else record})
    if check_mode:
        return out

    def write(value):
        try:
            sapi.update("instance", uuid, "update", metadata={marker_key: value})
        except ApiError as exc:
            raise ReprovisionApiError(f"cannot record reprovision marker {marker_key} on instance {uuid}",
                                      exc, out) from None

    if action == RESOLVE:
        if _resolve_pending(vmapi, uuid, record, marker_key, wait_timeout, poll_interval, out) == "done":
            done = finished(record)
            write(done)
            out.update(marker=done, resolved_pending=True,
                       after={"image_uuid": image_uuid, "marker": done})
            return out
    if marker:
        if vmapi is not None:
            try:
                pending["prior_jobs"] = sorted(j.get("uuid") for j in
                                               vmapi.list_vm_jobs(uuid, task="reprovision"))
            except ApiError:
                pending["prior_jobs"] = None  # cannot tell later; resolving will redo
        write(pending)
    try:
        sapi.upgrade_instance(uuid, image_uuid, timeout=float(wait_timeout))
    except ApiError as exc:
        if marker:
            write(finished(pending, "failed", error=trim_message(exc.api_message or str(exc))))
        raise ReprovisionApiError(f"SAPI could not reprovision instance {uuid} onto image {image_uuid}",
                                  exc, out) from None
    if marker:
        done = finished(pending)
        write(done)
        out["marker"] = done
        out["after"] = {"image_uuid": image_uuid, "marker": done}
    return out


def _resolve_pending(vmapi, uuid, record, marker_key, wait_timeout, poll_interval, out):
    """'done' if the interrupted run's reprovision happened (waiting for it if it still runs),
    else 'redo'."""
    if vmapi is None:
        raise ReprovisionError(
            f"instance {uuid} has reprovision marker {record.get('marker')!r} pending since "
            f"{record.get('started_at')}: an earlier run was interrupted and without vmapi_url "
            "it cannot be told whether that reprovision happened; give vmapi_url, or check the "
            f"VM and remove metadata key {marker_key} to reprovision again", out)
    if record.get("prior_jobs") is None:
        return "redo"
    try:
        jobs = vmapi.list_vm_jobs(uuid, task="reprovision")
    except ApiError as exc:
        raise ReprovisionApiError(f"cannot list the reprovision jobs of VM {uuid}", exc, out) from None
    verdict, job = judge_pending(record, jobs)
    if verdict == "wait":
        what = f"the interrupted reprovision of instance {uuid}"
        try:
            vmapi.wait_job(job["uuid"], timeout=wait_timeout, interval=poll_interval)
        except V.JobError as exc:
            raise ReprovisionError(f"{exc} ({what})", out, job=V.job_summary(exc.job)) from None
        except ApiError as exc:
            raise ReprovisionApiError(f"cannot follow VMAPI job {job['uuid']} ({what})", exc, out) from None
        return "done"
    return verdict
