#!/usr/bin/env python3
"""Multi-buffer MD5 (module_utils/md5_lanes) against hashlib, in one process.

For 16, 8, 4, 2 and 1 buffers of --size bytes (1 MiB): hashlib.md5 of each in turn
against one update_many over all of them, best of --repeat runs; MiB/s of both and
their ratio. Then one stream alone (hashlib, and the library's scalar C) for the
per-core cost in CPU-seconds per GiB, and, with --isa, the same table capped at
each instruction set the machine has (MANTA_OPS_MD5_LANES). JSON goes to
bench/results/md5_lanes-<UTC time>.json.

    .venv/bin/python bench/md5_lanes_bench.py [--size 1048576] [--repeat 7] [--isa]
"""
import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

from ansible_collections.manta.ops.plugins.module_utils import md5_lanes

REPO = Path(__file__).resolve().parent.parent

MIB = 1024 * 1024
COUNTS = (16, 8, 4, 2, 1)


def best_seconds(fn, repeat):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def hashlib_all(bufs):
    return [hashlib.md5(b).digest() for b in bufs]


def lanes_all(eng, bufs):
    hs = [md5_lanes.Md5(eng) for _ in bufs]
    md5_lanes.update_many(eng, [(h, memoryview(b)) for h, b in zip(hs, bufs)])
    return [h.digest() for h in hs]


def table(eng, bufs, repeat):
    rows = []
    for n in COUNTS:
        some = bufs[:n]
        assert lanes_all(eng, some) == hashlib_all(some)
        mib = n * len(some[0]) / MIB
        t_h = best_seconds(lambda: hashlib_all(some), repeat)
        t_l = best_seconds(lambda: lanes_all(eng, some), repeat)
        rows.append({"buffers": n, "hashlib_mib_s": round(mib / t_h), "lanes_mib_s": round(mib / t_l),
                     "ratio": round(t_h / t_l, 2)})
    return rows


def print_table(title, rows):
    print(f"\n{title}\n{'buffers':>8} {'hashlib MiB/s':>14} {'lanes MiB/s':>12} {'ratio':>6}")
    for r in rows:
        print(f"{r['buffers']:>8} {r['hashlib_mib_s']:>14} {r['lanes_mib_s']:>12} {r['ratio']:>6}")


def single_stream(eng, size, repeat):
    """One stream, one thread: what a core costs per GiB."""
    data = os.urandom(size)
    t_h = best_seconds(lambda: hashlib.md5(data).digest(), repeat)
    t_s = best_seconds(lambda: md5_lanes.Md5(eng, data).digest(), repeat)
    gib = size / (1024 * MIB)
    return {"bytes": size, "hashlib_mib_s": round(size / MIB / t_h), "scalar_c_mib_s": round(size / MIB / t_s),
            "hashlib_cpu_s_per_gib": round(t_h / gib, 3), "scalar_c_cpu_s_per_gib": round(t_s / gib, 3)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=MIB)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--isa", action="store_true", help="also each lane count the CPU has")
    args = ap.parse_args()

    eng = md5_lanes.engine()
    if eng is None:
        sys.exit(f"no native library: {md5_lanes.last_error}")
    bufs = [bytearray(os.urandom(args.size)) for _ in range(max(COUNTS))]
    out = {"machine": platform.machine(), "cpu": _cpu_model(), "python": platform.python_version(),
           "size": args.size, "repeat": args.repeat, "isa": eng.isa, "lanes": eng.lanes,
           "library": eng.path, "table": table(eng, bufs, args.repeat)}
    print(f"md5_lanes {eng.isa} ({eng.lanes} lanes), buffers of {args.size} bytes, best of {args.repeat}")
    print_table(f"{eng.isa}:", out["table"])

    if args.isa:
        out["by_isa"] = {}
        for cap in (x for x in (16, 8, 1) if x < eng.lanes):
            os.environ["MANTA_OPS_MD5_LANES"] = str(cap)
            capped = md5_lanes.engine()
            out["by_isa"][capped.isa] = rows = table(capped, bufs, args.repeat)
            print_table(f"{capped.isa} (MANTA_OPS_MD5_LANES={cap}):", rows)
        os.environ.pop("MANTA_OPS_MD5_LANES")

    out["single_stream"] = one = single_stream(eng, 64 * MIB, 3)
    print(f"\none stream, one thread, 64 MiB: hashlib {one['hashlib_mib_s']} MiB/s "
          f"({one['hashlib_cpu_s_per_gib']} CPU-s/GiB), scalar C {one['scalar_c_mib_s']} MiB/s "
          f"({one['scalar_c_cpu_s_per_gib']} CPU-s/GiB)")
    best = max(out["table"], key=lambda r: r["lanes_mib_s"])
    print(f"lanes at {best['buffers']} buffers: {best['lanes_mib_s']} MiB/s "
          f"= {round(1024 / best['lanes_mib_s'], 3)} CPU-s/GiB")

    results = REPO / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"md5_lanes-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {path.relative_to(REPO)}")


def _cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
