#!/usr/bin/env python3
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""How good is the check-mode estimate? `evacuate.yml --check` on a seeded lab prints an
estimated duration; the same evacuation is then run for real and timed (wall clock of
the whole ansible-playbook run). Target: estimate within +-30% of the actual duration.

    .venv/bin/python bench/evacuate_estimate_bench.py [--objects 20000] [--node 3.stor]
"""
import argparse
import json
import os
import re
import subprocess
import time
import uuid

from evacuate_common import REPO, bench_lab, save


def play(lab, extra, check=False):
    cmd = [str(REPO / ".venv" / "bin" / "ansible-playbook"), "-i", "inventories/lab",
           "playbooks/evacuate.yml", "-e", json.dumps(extra)]
    if check:
        cmd.append("--check")
    env = dict(os.environ, **lab.env(), ANSIBLE_FORCE_COLOR="0")
    t0 = time.monotonic()
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
    dt = time.monotonic() - t0
    if p.returncode != 0:
        raise RuntimeError(p.stdout[-5000:])
    return p.stdout, dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", type=int, default=20000)
    ap.add_argument("--node", default="3.stor")
    ap.add_argument("--concurrency", type=int, default=16)
    a = ap.parse_args()
    lab = bench_lab()
    lab.run("seed", "--objects", a.objects)
    job = "estimate-" + uuid.uuid4().hex[:6]
    work = f"/var/tmp/{job}"
    extra = {"evacuate": a.node, "evacuate_job": job, "evacuate_work_dir": work,
             "evacuate_agent_dir": work + "-agent", "evacuate_copy_concurrency": a.concurrency}
    out, check_s = play(lab, extra, check=True)
    out = re.sub(r"\s+", " ", out)          # the YAML callback wraps long lines
    m = re.search(r"Estimated duration: ([\d.]+) s \(scan ([\d.]+) s, copy ([\d.]+) s, "
                  r"metadata ([\d.]+) s, overhead ([\d.]+) s, (\d+) rounds", out)
    if not m:
        raise RuntimeError("no estimate in the check-mode output:\n" + out[-4000:])
    est = float(m.group(1))
    copies = re.search(r": (\d+) copies \([\d.]+ MiB\); (\d+) to move", out)
    _, actual = play(lab, extra)
    ratio = est / actual
    res = {"objects_seeded": a.objects, "copies_to_move": int(copies.group(2)) if copies else None,
           "estimate_s": est, "components": {"scan": float(m.group(2)), "copy": float(m.group(3)),
                                             "metadata": float(m.group(4)),
                                             "overhead": float(m.group(5)),
                                             "rounds": int(m.group(6))},
           "actual_s": round(actual, 1), "ratio": round(ratio, 2), "check_mode_run_s": round(check_s, 1)}
    print(f"{res['copies_to_move']} copies: estimate {est:.1f}s, actual {actual:.1f}s, "
          f"ratio {ratio:.2f} (target 0.7 - 1.3); components {res['components']}", flush=True)
    save("estimate", res)


if __name__ == "__main__":
    main()
