"""Shared fixtures. `lab` brings up one whole lab for the test session.

The lab lives in a fresh directory under /var/tmp (the postgres user must be
able to reach it) on base port $LAB_TEST_BASE_PORT (default: the first free block, see labhandle.py), and is
brought down, by pid, at the end. Set LAB_TEST_HOME to reuse a running lab
(it is then left up).
"""
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))  # modrun, labhandle

from labhandle import LabHandle, _free_base_port  # noqa: E402


@pytest.fixture(scope="session")
def lab():
    reuse = os.environ.get("LAB_TEST_HOME")
    if reuse:
        yield LabHandle(reuse)
        return
    home = tempfile.mkdtemp(prefix="manta-lab-test-", dir="/var/tmp")
    os.chmod(home, 0o755)
    handle = LabHandle(home)
    port = os.environ.get("LAB_TEST_BASE_PORT") or str(_free_base_port())
    try:
        handle.run("up", "--base-port", port)
        yield handle
    finally:
        handle.run("down", check=False)
        if not os.environ.get("LAB_TEST_KEEP"):
            shutil.rmtree(home, ignore_errors=True)
