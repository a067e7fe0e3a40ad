"""Helpers of the fash ring tests: the node-fash vectors in ../shared/vectors."""
import json
import os
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
# The project's shared folder sits beside the clone; /work/shared when the clone lives elsewhere.
_SHARED = [pathlib.Path(p) for p in (os.environ.get("MANTA_SHARED"), ROOT.parent / "shared", "/work/shared") if p]
VECTORS = next((p / "vectors" for p in _SHARED if (p / "vectors").is_dir()), _SHARED[0] / "vectors")

P1 = "tcp://1.moray.example.com:2020"
P2 = "tcp://2.moray.example.com:2020"
P3 = "tcp://3.moray.example.com:2020"
P4 = "tcp://4.moray.example.com:2020"
PNODES3 = "%s, %s, %s" % (P1, P2, P3)


def vector_path(name):
    path = VECTORS / name
    if not path.exists():
        pytest.fail("vector %s not found (set MANTA_SHARED to the shared/ folder)" % path)
    return path


def transcript_dumps():
    """``{section title: [(key, value)]}`` for every '### dump ...' section of cli_transcript.txt."""
    text = vector_path("cli_transcript.txt").read_text(encoding="utf-8")
    dumps = {}
    current = None
    for line in text.splitlines():
        if line.startswith("### "):
            title = line[4:].strip()
            current = dumps.setdefault(title, []) if title.startswith("dump") else None
        elif line.startswith("$ ") or line.startswith("    "):
            if line.startswith("$ "):
                current = None
        elif current is not None and " = " in line:
            k, v = line.split(" = ", 1)
            current.append((k, v))
    return dumps


def dump_text(items):
    return [(k.decode("utf-8"), v.decode("utf-8")) for k, v in items]


def normalize_vnode_data(items):
    """node-fash deserialize writes VNODE_DATA elements as strings (fash.md §7 item 5); we write numbers."""
    out = []
    for k, v in items:
        if k == "VNODE_DATA":
            v = json.dumps([int(x) for x in json.loads(v)], separators=(",", ":"))
        out.append((k, v))
    return out


def transcript_get_nodes():
    """``[(key, {"pnode", "vnode", "data"})]`` of the get-node lines in cli_transcript.txt section 2."""
    text = vector_path("cli_transcript.txt").read_text(encoding="utf-8")
    out = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"\$ fash get-node -b leveldb -l ringA (.*)$", line)
        if m and i + 1 < len(lines):
            r = re.match(r"\s+\{ pnode: '([^']*)', vnode: (\d+), data: (.*) \}", lines[i + 1])
            if r:
                data = r.group(3)
                out.append((m.group(1), {"pnode": r.group(1), "vnode": int(r.group(2)),
                                         "data": int(data) if data.isdigit() else data.strip("'")}))
    return out
