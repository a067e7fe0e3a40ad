#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
from __future__ import annotations

DOCUMENTATION = r"""
---
module: reshard_em_ring
short_description: Stage and swap the hash ring of one electric-moray process, checking its stamp and status
version_added: 0.1.0
description:
  - Runs in an electric-moray zone (one task per electric-moray process) and installs a ring image the way
    manta-reshard's C(electric-moray-update-ring.sh) does, without a reprovision.
  - V(staged) downloads the image from IMGAPI, checks its sha1, extracts C(hash_ring/) and verifies that it opens
    and carries the image's stamp, into C(<ring_path>.reshard/<image>). Nothing the process uses is touched; run
    it before any write is blocked so that the swap itself is quick.
  - V(installed) swaps the ring in, unless the ring in place is already stamped with the image and the process
    serves it. It stops the process (O(svcadm) C(disable)), moves the ring aside to
    C(<ring_path>.reshard/<old image>) (kept for a roll back), moves the staged ring in, starts the process and
    polls its status endpoint until it reports the new stamp, and optionally a given view of the index shards
    (restarting it again when its configuration has not been re-rendered yet).
  - With O(wait_for) the swap waits until each listed status endpoint serves the image first, so tasks run in
    parallel on several processes still swap one after another (rolling).
  - With O(rolling_order) (every process's status endpoint, in swap order) the processes are swapped in batches
    of O(batch) (default max(1, N/3), never all N), as manta-reshard did. This process waits until the
    batch before its own serves the image (that batch waited for the one before it) and at least one process
    outside its batch answers, so one always serves.
  - Every step looks at the real state first (stamp file, staged directory, status), so a swap interrupted
    half way is completed by the next run. V(query) only reports; V(absent) removes the staging directory.
options:
  state:
    description: What to do.
    type: str
    choices: [staged, installed, query, absent]
    default: installed
  ring_path:
    description: The process's ring directory (SMF property C(electric-moray/ring-location)).
    type: path
    required: true
  image_uuid:
    description: The ring image to stage or install.
    type: str
  images:
    description: With V(staged), several images to stage (in addition to O(image_uuid)).
    type: list
    elements: str
    default: []
  imgapi_url:
    description:
      - IMGAPI holding the image (C(HASH_RING_IMGAPI_SERVICE)).
      - If not set, the environment variable E(MANTA_IMGAPI_URL) is used.
    type: str
  svcadm:
    description: The zone's service-control command (C(svcadm) in a zone; the lab inventory's C(manta_svcadm)).
    type: str
    default: svcadm
  service:
    description: The SMF service or FMRI of this process.
    type: str
    default: electric-moray
  status_url:
    description: The process's status endpoint (C(http://<ip>:<4020+i>/status)).
    type: str
    required: true
  index_shards:
    description:
      - Expected view of the index shards once started, a mapping of host name to read-only flag. A process whose configuration
        lacks a host (config-agent has not re-rendered it yet) is restarted again, up to O(restarts) times.
    type: dict
    default: {}
  wait_for:
    description: Status endpoints that must serve O(image_uuid) before this process is swapped.
    type: list
    elements: str
    default: []
  rolling_order:
    description:
      - The status endpoints of all the electric-moray processes being swapped, in swap order (this one's
        O(status_url) among them). They are cut into batches of O(batch); this process waits for the processes
        of the batch before its own to serve the image (in addition to O(wait_for)); that batch waited for the
        one before it, and so on.
    type: list
    elements: str
    default: []
  batch:
    description: Processes swapped at the same time with O(rolling_order); V(0) means max(1, N/3) (capped at N-1).
    type: int
    default: 0
  only_from:
    description:
      - Swap only a ring stamped with one of these images. A ring stamped with O(superseded_by) is left alone
        (the result then has C(superseded=true)); any other stamp fails the task. This keeps a late transitional-ring task from ever
        replacing the final ring.
    type: list
    elements: str
    default: []
  superseded_by:
    description: Images that make this swap obsolete (see O(only_from)).
    type: list
    elements: str
    default: []
  wait_sapi:
    description:
      - Before swapping, wait until a SAPI application's metadata key holds a value, C({url, application, key,
        value}) (e.g. C(HASH_RING_IMAGE) = the final image). Lets this task be started early, in the background,
        and act the moment the reshard is ready for it.
      - With O(rolling_order), only the processes of the first batch wait for SAPI; the others wait for the batch
        before theirs to serve the image, which it does only once SAPI names it.
    type: dict
  wait_timeout:
    description: Seconds to wait for O(wait_sapi) and O(wait_for) (default O(timeout)).
    type: float
  timeout:
    description: Seconds to wait for the process to stop, to come back with the new ring, or for O(wait_for).
    type: float
    default: 120
  restart:
    description:
      - How the process is restarted around the swap. V(svcadm) (production) stops it with O(svcadm) C(disable),
        swaps the ring, starts it with C(enable), as C(electric-moray-update-ring.sh) does. V(signal) moves the
        ring under the running process (which keeps serving the ring it read at start from its open files) and
        sends its pid (from its status, checked against O(ring_path)) O(restart_signal); the process stops
        listening, answers what is in flight and starts again, reading its configuration and ring at start.
        One round trip fewer, and no service-manager process to start (the lab's electric-moray restarts in
        place on SIGHUP). A process that is not running is started with O(svcadm) either way.
    type: str
    choices: [svcadm, signal]
    default: svcadm
  restart_signal:
    description: The signal that makes the process restart itself, with O(restart=signal).
    type: str
    default: HUP
  test_crash:
    description: Test hook; kill this process (SIGKILL) right after the electric-moray process is stopped
      (with O(restart=signal), right after the ring is moved under it, before the signal).
    type: bool
    default: false
  restarts:
    description: Extra restarts allowed when the process comes back with the wrong view of the index shards.
    type: int
    default: 5
  poll:
    description: Seconds between two status polls.
    type: float
    default: 0.05
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
requirements: [plyvel, requests]
author:
  - manta.ops developers (@manta-ops)
"""

EXAMPLES = r"""
- name: Stage the final ring next to every electric-moray ring
  manta.ops.reshard_em_ring:
    state: staged
    ring_path: "{{ ring_path }}"
    image_uuid: "{{ final_image }}"
    imgapi_url: "{{ manta_imgapi_url }}"
    status_url: "{{ emoray_status_url }}"

- name: Swap it in
  manta.ops.reshard_em_ring:
    ring_path: "{{ ring_path }}"
    image_uuid: "{{ final_image }}"
    svcadm: "{{ manta_svcadm | default('svcadm') }}"
    status_url: "{{ emoray_status_url }}"
    index_shards: {"3.moray.us-east.example.com": false}
"""

RETURN = r"""
image_before:
  description: The image stamped on the ring in place before the run.
  returned: always
  type: str
image_after:
  description: The image stamped on the ring in place after the run.
  returned: always
  type: str
stopped_ts:
  description: When the process stopped answering (epoch seconds), for a swap.
  returned: when swapped
  type: float
serving_ts:
  description: When the process began serving the new ring (epoch seconds), as its status reports it
    (C(serving_since), else C(start_time)); else when it first answered.
  returned: when installed
  type: float
batch_index:
  description: The batch of this process in O(rolling_order) (0 = the first to swap).
  returned: when rolling_order is given
  type: int
waited_for:
  description: The status endpoints this process waited for (to serve the image) before it was swapped.
  returned: when installed, not in check mode
  type: list
  elements: str
restarts:
  description: Extra restarts made because of a stale index-shard view.
  returned: when installed
  type: int
status:
  description: The process's last status document (ring part and index shards).
  returned: always
  type: dict
staged:
  description: Images staged next to the ring.
  returned: always
  type: list
"""

import os
import shlex
import shutil
import time

from ansible.module_utils.basic import AnsibleModule, env_fallback

from ansible_collections.manta.ops.plugins.module_utils import reshard_common as rc
from ansible_collections.manta.ops.plugins.module_utils import reshard_ring as rring


def staged_images(ring_path):
    root = rring.staging_root(ring_path)
    if not os.path.isdir(root):
        return []
    return sorted(n for n in os.listdir(root) if not n.startswith(".")
                  and rring.stamp_image(os.path.join(root, n)) == n)


class Swapper:
    def __init__(self, module):
        self.m = module
        self.p = module.params
        self.res = {"changed": False, "restarts": 0}
        self.wait_s = self.p.get("wait_timeout") or self.p["timeout"]
        self.lockfh = None

    def lock(self):
        """One swap at a time per ring (a run started after a killed one waits for it)."""
        import fcntl
        root = rring.staging_root(self.p["ring_path"])
        os.makedirs(root, exist_ok=True)
        self.lockfh = open(os.path.join(root, ".swap.lock"), "w")
        fcntl.flock(self.lockfh, fcntl.LOCK_EX)

    def svc(self, action):
        cmd = shlex.split(self.p["svcadm"]) + [action, self.p["service"]]
        rc_, out, err = self.m.run_command(cmd)
        if rc_ != 0:
            self.m.fail_json(msg=f"{' '.join(cmd)} failed ({rc_}): {(err or out).strip()[:500]}", **self.res)
        return out

    def status(self):
        return rc.em_status(self.p["status_url"], timeout=2.0)

    def wait_down(self, deadline):
        while time.monotonic() < deadline:
            if self.status() is None:
                return time.time()
            time.sleep(self.p["poll"])
        self.m.fail_json(msg=f"electric-moray ({self.p['status_url']}) still answers after "
                             f"'{self.p['svcadm']} disable {self.p['service']}'", **self.res)

    def view_ok(self, st):
        want = self.p["image_uuid"]
        if rc.status_image(st) != want:
            return False, f"serves ring {rc.status_image(st)}, expected {want}"
        return rc.index_shards_ok(st, self.p["index_shards"])

    def wait_up(self, deadline):
        """(status, serving_ts) once the process answers; fails on timeout."""
        last = None
        while time.monotonic() < deadline:
            st = self.status()
            if st is not None:
                return st, time.time()
            time.sleep(self.p["poll"])
        self.m.fail_json(msg=f"electric-moray ({self.p['status_url']}) did not come back within "
                             f"{self.p['timeout']:g}s after '{self.p['svcadm']} enable {self.p['service']}'"
                             f" (last: {last})", **self.res)

    def sapi_ready(self):
        w = self.p.get("wait_sapi") or {}
        if not w:
            return True
        try:
            r = rc.requests.get(f"{w['url'].rstrip('/')}/applications/{w['application']}", timeout=5,
                                headers={"Accept-Version": "~2"})
            return r.status_code == 200 and (r.json().get("metadata") or {}).get(w["key"]) == w["value"]
        except (rc.requests.RequestException, ValueError):
            return False

    def barrier(self, deadline):
        pending = list(self.p["wait_for"])
        order = list(self.p["rolling_order"] or [])
        mine, index = [], 0
        if order:
            if self.p["status_url"] not in order:
                self.m.fail_json(msg=f"status_url {self.p['status_url']} is not in rolling_order {order}",
                                 **self.res)
            batches = rring.swap_batches(order, self.p["batch"])
            index = next(i for i, b in enumerate(batches) if self.p["status_url"] in b)
            self.res["batch_index"] = index
            mine = batches[index]
            # the batch just before this one: it swapped only once the ones before it served the image, so
            # polling it alone is enough (and keeps the status polls inside the window few)
            if index > 0:
                pending += [u for u in batches[index - 1] if u not in pending]
        self.res["waited_for"] = list(pending)
        # Only the first batch waits for SAPI: a later batch follows processes that already serve the image,
        # which they did only after SAPI named it (no need for every worker to poll SAPI inside the window).
        if index == 0:
            while not self.sapi_ready():
                if time.monotonic() > deadline:
                    w = self.p["wait_sapi"]
                    self.m.fail_json(msg=f"waited {self.wait_s:g}s for SAPI {w['key']} to become {w['value']}; "
                                         "not swapping", **self.res)
                time.sleep(self.p["poll"])
        while pending and time.monotonic() < deadline:
            pending = [u for u in pending if rc.status_image(rc.em_status(u)) != self.p["image_uuid"]]
            if pending:
                time.sleep(self.p["poll"])
        if pending:
            self.m.fail_json(msg=f"waited {self.wait_s:g}s for {', '.join(pending)} to serve "
                                 f"{self.p['image_uuid']} before swapping this one", **self.res)
        others = [u for u in order if u not in mine]
        if others:
            # rolling: never stop this one unless a process outside its batch is serving
            while not any(rc.em_status(u, timeout=2.0) is not None for u in others):
                if time.monotonic() > deadline:
                    self.m.fail_json(msg=f"no other electric-moray answers ({', '.join(others)}); not stopping "
                                         f"{self.p['status_url']}", **self.res)
                time.sleep(self.p["poll"])

    def imgapi(self):
        from ansible_collections.manta.ops.plugins.module_utils.imgapi import ImgapiClient
        if not self.p.get("imgapi_url"):
            self.m.fail_json(msg="imgapi_url is required to stage a ring image")
        return ImgapiClient(self.p["imgapi_url"], timeout=60)

    # ---- states -----------------------------------------------------------------------------
    def query(self):
        self.res["status"] = self.short(self.status())

    @staticmethod
    def short(st):
        if not st:
            return None
        return {"image": rc.status_image(st), "start_time": st.get("start_time"),
                "serving_since": st.get("serving_since"), "pid": st.get("pid"),
                "index_shards": st.get("index_shards"), "read_only_pnodes": st.get("read_only_pnodes"),
                "ring": {k: (st.get("ring") or {}).get(k) for k in ("vnodes", "pnodes", "data_vnodes", "ro")}}

    def staged(self):
        imgs = ([self.p["image_uuid"]] if self.p["image_uuid"] else []) + list(self.p["images"] or [])
        for img in imgs:
            self.stage_one(img)

    def stage_one(self, img):
        rp = self.p["ring_path"]
        if rring.stamp_image(rp) == img or rring.is_staged(rp, img):
            return
        self.res["changed"] = True
        if self.m.check_mode:
            return
        try:
            rring.stage(self.imgapi(), rp, img)
        except Exception as exc:  # noqa: BLE001
            self.m.fail_json(msg=f"cannot stage ring image {img} at {rring.staged_dir(rp, img)}: {exc}",
                             **self.res)

    def installed(self):
        p = self.p
        rp, img = p["ring_path"], p["image_uuid"]
        if not self.m.check_mode:
            self.barrier(time.monotonic() + self.wait_s)
            self.lock()
        deadline = time.monotonic() + p["timeout"]
        st = self.status()
        in_place = rring.stamp_image(rp) if os.path.isdir(rp) else None
        if in_place == img and st is not None:
            ok, why = self.view_ok(st)
            if ok:
                # already done (maybe by a run that was killed before journaling it): the process's start
                # time is when it began serving this ring
                self.res["serving_ts"] = rring.serving_ts(st)
                self.res["already"] = True
                self.res["status"] = self.short(st)
                return
        if in_place in (p["superseded_by"] or []):
            self.res["superseded"] = True
            self.res["status"] = self.short(st)
            return
        if in_place != img and in_place is not None and p["only_from"] and in_place not in p["only_from"] \
                and not self.m.check_mode:
            self.m.fail_json(msg=f"ring at {rp} is stamped {in_place}; this swap to {img} only replaces "
                                 f"{', '.join(p['only_from'])}", **self.res)
        self.res["changed"] = True
        if self.m.check_mode:
            return
        if in_place != img:
            if not rring.is_staged(rp, img):
                self.stage_one(img)
            if st is not None and self.by_signal:
                # the process keeps serving the ring it read at start (its files stay open); the ring is
                # moved under it, then it restarts itself and reads the new one
                self.move_ring(in_place)
                self.crash_hook()
                st = self.restart_by_signal(st, deadline)
            else:
                if st is not None:
                    self.svc("disable")
                    self.res["stopped_ts"] = self.wait_down(deadline)
                    self.crash_hook()
                else:
                    self.res["stopped_ts"] = time.time()
                self.move_ring(in_place)
        elif st is not None and rc.status_image(st) != img:
            # the ring in place is the image but the process serves another one: a run killed between the
            # move and the restart. Restart it.
            if self.by_signal:
                st = self.restart_by_signal(st, deadline)
            else:
                self.svc("disable")
                self.res["stopped_ts"] = self.wait_down(deadline)
        why = "it did not come back"
        for attempt in range(p["restarts"] + 1):
            if self.status() is None:
                self.svc("enable")
            st, ts = self.wait_up(deadline)
            ok, why = self.view_ok(st)
            if ok:
                # when the process itself says it began serving (its RPC port listening); the poll's
                # own time only when it does not say
                self.res["serving_ts"] = rring.serving_ts(st, start_time=False) or ts
                self.res["status"] = self.short(st)
                return
            if attempt == p["restarts"] or rc.status_image(st) != img:
                break
            self.res["restarts"] += 1
            if self.by_signal:
                self.restart_by_signal(st, deadline)
            else:
                self.svc("disable")
                self.wait_down(deadline)
        self.m.fail_json(msg=f"electric-moray ({p['status_url']}) came back but {why}", **self.res)

    @property
    def by_signal(self):
        return self.p["restart"] == "signal"

    def crash_hook(self):
        if self.p["test_crash"]:
            import signal
            os.kill(os.getpid(), signal.SIGKILL)

    def move_ring(self, in_place):
        """The ring in place to ``<ring>.reshard/<its image>`` (kept for a roll back), the staged one in."""
        rp, img = self.p["ring_path"], self.p["image_uuid"]
        root = rring.staging_root(rp)
        if os.path.isdir(rp):
            keep = os.path.join(root, in_place or f"unstamped-{int(time.time())}")
            if os.path.exists(keep):
                shutil.rmtree(keep)
            os.rename(rp, keep)
        os.rename(rring.staged_dir(rp, img), rp)

    def restart_by_signal(self, st, deadline):
        """restart=signal: the process restarts itself on O(restart_signal) (it stops listening, answers what
        is in flight, closes its ring and starts again, reading its config and ring at start). Returns its
        new status; ``stopped_ts`` is when it stopped answering. A process that exits instead is started
        with O(svcadm) by the caller (its status stays down)."""
        import signal as sigmod
        pid = st.get("pid")
        path = (st.get("ring") or {}).get("path")
        if not isinstance(pid, int) or pid <= 1 or not path \
                or os.path.realpath(path) != os.path.realpath(self.p["ring_path"]):
            self.m.fail_json(msg=f"{self.p['status_url']} reports pid {pid!r} and ring {path!r}; cannot restart "
                                 f"the process of {self.p['ring_path']} by signal", **self.res)
        before = (st.get("serving_since"), st.get("start_time"))
        sig = getattr(sigmod, "SIG" + self.p["restart_signal"].upper().removeprefix("SIG"))
        os.kill(pid, sig)
        stopped = None
        while time.monotonic() < deadline:
            cur = self.status()
            if cur is None:
                stopped = stopped or time.time()
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break                       # it exited: the caller starts it with svcadm
            elif cur.get("pid") != pid or (cur.get("serving_since"), cur.get("start_time")) != before:
                self.res["stopped_ts"] = stopped or time.time()
                return cur
            time.sleep(self.p["poll"])
        self.res["stopped_ts"] = stopped or time.time()
        return None

    def absent(self):
        root = rring.staging_root(self.p["ring_path"])
        if os.path.isdir(root):
            self.res["changed"] = True
            if not self.m.check_mode:
                shutil.rmtree(root, ignore_errors=True)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", default="installed", choices=["staged", "installed", "query", "absent"]),
            ring_path=dict(type="path", required=True),
            image_uuid=dict(type="str"),
            images=dict(type="list", elements="str", default=[]),
            imgapi_url=dict(type="str", fallback=(env_fallback, ["MANTA_IMGAPI_URL"])),
            svcadm=dict(type="str", default="svcadm"),
            service=dict(type="str", default="electric-moray"),
            status_url=dict(type="str", required=True),
            index_shards=dict(type="dict", default={}),
            wait_for=dict(type="list", elements="str", default=[]),
            rolling_order=dict(type="list", elements="str", default=[]),
            batch=dict(type="int", default=0),
            restart=dict(type="str", default="svcadm", choices=["svcadm", "signal"]),
            restart_signal=dict(type="str", default="HUP"),
            timeout=dict(type="float", default=120),
            restarts=dict(type="int", default=5),
            poll=dict(type="float", default=0.05),
            wait_sapi=dict(type="dict"),
            only_from=dict(type="list", elements="str", default=[]),
            superseded_by=dict(type="list", elements="str", default=[]),
            wait_timeout=dict(type="float"),
            test_crash=dict(type="bool", default=False),
        ),
        required_if=[("state", "staged", ["image_uuid", "images"], True), ("state", "installed", ["image_uuid"])],
        supports_check_mode=True,
    )
    p = module.params
    if p["restart"] == "signal":
        import signal as sigmod
        name = "SIG" + str(p["restart_signal"]).upper().removeprefix("SIG")
        if not isinstance(getattr(sigmod, name, None), sigmod.Signals) or name in ("SIGKILL", "SIGSTOP"):
            module.fail_json(msg=f"restart_signal {p['restart_signal']!r} is not a signal a process can handle; "
                                 "e.g. HUP, USR1, USR2")
    if p["batch"] < 0:
        module.fail_json(msg=f"batch must be 0 (max(1, N/3)) or a positive number of processes, got {p['batch']}")
    sw = Swapper(module)
    before = rring.stamp_image(p["ring_path"]) if os.path.isdir(p["ring_path"]) else None
    sw.res["image_before"] = before
    getattr(sw, p["state"])()
    sw.res.setdefault("status", Swapper.short(sw.status()))
    sw.res["image_after"] = rring.stamp_image(p["ring_path"]) if os.path.isdir(p["ring_path"]) else None
    if module.check_mode and p["state"] == "installed" and sw.res["changed"]:
        sw.res["image_after"] = p["image_uuid"]
    sw.res["staged"] = staged_images(p["ring_path"])
    if module._diff:
        sw.res["diff"] = {"before": {"ring_image": before}, "after": {"ring_image": sw.res["image_after"]}}
    module.exit_json(**sw.res)


if __name__ == "__main__":
    main()
