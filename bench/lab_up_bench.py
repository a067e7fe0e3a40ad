"""Benchmark: how long `lab up` takes, against the 60 s budget of issue 2.

Measures, in one run, on a fresh lab home:
  - the baseline: starting the bare processes the lab is made of, without any
    of the lab's wiring (one ZooKeeper and one initdb'd PostgreSQL started and
    stopped) — the floor any lab could reach on this machine;
  - a cold `lab up` (creating everything), a warm `lab up` on an up lab
    (must change nothing), and `lab down` followed by `lab up` (data kept).
Prints each time, its ratio to the baseline and to the 60 s budget.

    .venv/bin/python bench/lab_up_bench.py [--base-port 21000]
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

BUDGET = 60.0
LAB = [sys.executable, "-m", "manta_lab.cli"]


def timed(argv, **kw):
    t0 = time.monotonic()
    subprocess.run(argv, check=True, capture_output=True, **kw)
    return time.monotonic() - t0


def baseline(base_port):
    """Bare ZooKeeper + one PostgreSQL (initdb, start, answering), then stopped."""
    from manta_lab import config, postgres, procs, zookeeper
    home = tempfile.mkdtemp(prefix="lab-bench-base-", dir="/var/tmp")
    os.chmod(home, 0o755)
    cfg = config.LabConfig(home=home, base_port=base_port)
    cfg.save()
    data = os.path.join(home, "pg")
    port = base_port + 999
    try:
        t0 = time.monotonic()
        zookeeper.start(cfg)
        postgres.prepare_dir(data)
        postgres.initdb(data, cfg.log("bench-initdb"))
        procs.spawn(cfg, "bench-pg", [postgres.binary("postgres"), "-D", data, "-p", str(port),
                                      "-k", data, "-c", "listen_addresses=127.0.0.1"],
                    user=postgres.run_user())
        deadline = time.monotonic() + 60
        while not postgres.ping(port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"baseline postgres did not answer; see {cfg.log('bench-pg')}")
            time.sleep(0.05)
        return time.monotonic() - t0
    finally:
        procs.stop(cfg, "bench-pg")
        zookeeper.stop(cfg)
        shutil.rmtree(home, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-port", type=int, default=21000)
    args = ap.parse_args()
    base = baseline(args.base_port)
    home = tempfile.mkdtemp(prefix="lab-bench-", dir="/var/tmp")
    os.chmod(home, 0o755)
    try:
        cold = timed([*LAB, "--home", home, "up", "--base-port", str(args.base_port)])
        warm = timed([*LAB, "--home", home, "up"])
        timed([*LAB, "--home", home, "down"])
        again = timed([*LAB, "--home", home, "up"])
    finally:
        subprocess.run([*LAB, "--home", home, "down"], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
    print(f"baseline (bare zookeeper + 1 postgres): {base:6.1f} s")
    for name, t in (("cold lab up", cold), ("warm lab up (no-op)", warm), ("down, then up", again)):
        print(f"{name:<38} {t:6.1f} s   x{t / base:5.1f} of baseline   "
              f"{t / BUDGET:5.2f} of the {BUDGET:.0f} s budget")
    ok = cold <= BUDGET and again <= BUDGET
    print("PASS" if ok else "FAIL", f"(budget {BUDGET:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
