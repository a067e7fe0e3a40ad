"""reshard_rows: the split summary used by the plan and its rehearsal."""

from ansible_collections.manta.ops.plugins.module_utils import reshard_rows as rr


def test_split_summary():
    cb = {0: [10, 100], 1: [5, 50], 2: [0, 0]}
    s = rr.split_summary(cb, [0, 1, 2], [0])
    assert s["moving"] == {"vnodes": 1, "rows": 10, "bytes": 100}
    assert s["staying"] == {"vnodes": 2, "rows": 5, "bytes": 50}
