"""Run an Ansible module of this collection in-process-free, the way Ansible does.

`run_module("fash_ring", {...}, check=True, diff=True)` executes
plugins/modules/fash_ring.py with ANSIBLE_MODULE_ARGS on stdin-equivalent (an
args file) in a subprocess of the venv's python and returns the parsed result
dict (``failed``/``msg`` on failure). This exercises argument parsing, check
mode, diff and exit_json/fail_json exactly as a task would.
"""
import json
import os
import subprocess
import sys
import tempfile

MODULE_PKG = "ansible_collections.manta.ops.plugins.modules"


def run_module(name, args, check=False, diff=False, env=None, timeout=600):
    payload = dict(args)
    payload["_ansible_check_mode"] = check
    payload["_ansible_diff"] = diff
    payload.setdefault("_ansible_tmpdir", tempfile.gettempdir())
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump({"ANSIBLE_MODULE_ARGS": payload}, fh)
        argfile = fh.name
    try:
        proc = subprocess.run(
            [sys.executable, "-m", f"{MODULE_PKG}.{name}", argfile],
            capture_output=True, text=True, timeout=timeout,
            env={**os.environ, **(env or {})})
    finally:
        os.unlink(argfile)
    out = proc.stdout.strip()
    try:
        # The result is the last JSON document on stdout.
        return json.loads(out[out.index("{"):]) if out else {"failed": True, "msg": proc.stderr}
    except ValueError:
        return {"failed": True, "msg": f"unparseable module output: {out!r} stderr={proc.stderr!r}"}
