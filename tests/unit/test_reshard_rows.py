"""reshard_rows.Deleter: batches per vnode until empty, pause, resume per table, progress (fake PostgreSQL)."""
import threading

from ansible_collections.manta.ops.plugins.module_utils import reshard_rows as rr


class FakeDb:
    """rows: {table: {vnode: count}}; DELETE ... LIMIT n removes up to n rows of the vnode."""

    def __init__(self, rows):
        self.rows = rows
        self.lock = threading.Lock()
        self.queries = []


class FakeCursor:
    def __init__(self, db):
        self.db = db
        self.rowcount = 0

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False

    def execute(self, q, args):
        text = q.as_string(None) if hasattr(q, "as_string") else str(q)
        vnode, limit = args
        table = text.split('"')[1]
        with self.db.lock:
            self.db.queries.append((table, vnode))
            have = self.db.rows[table].get(vnode, 0)
            n = min(have, limit)
            self.db.rows[table][vnode] = have - n
            self.rowcount = n


class FakeConn:
    def __init__(self, db):
        self.db = db
        self.closed = False

    def cursor(self):
        return FakeCursor(self.db)

    def close(self):
        self.closed = True


def test_deleter_empties_every_ghost_vnode(monkeypatch):
    # psycopg2.sql.Composed.as_string needs a connection; give the fake one a plain rendering
    from psycopg2 import sql
    monkeypatch.setattr(sql.Composed, "as_string", lambda self, ctx: "".join(
        f'"{p.strings[0]}"' if isinstance(p, sql.Identifier) else (p.as_string(ctx) if hasattr(p, "as_string")
                                                                    and not isinstance(p, sql.SQL) else p.string)
        for p in self._wrapped), raising=False)
    db = FakeDb({"manta_directory_counts": {1: 3, 2: 0}, "manta": {1: 25, 2: 7, 3: 40}})
    progress = []
    done = []
    d = rr.Deleter(lambda: FakeConn(db), ghosts=[1, 2], batch_size=10, pause=0, connections=2,
                   progress=progress.append, report_every=0, on_table_done=done.append)
    out = d.run(["manta_directory_counts", "manta"])
    assert db.rows["manta"] == {1: 0, 2: 0, 3: 40}          # vnode 3 is not a ghost: untouched
    assert db.rows["manta_directory_counts"][1] == 0
    assert out == {"manta_directory_counts": 3, "manta": 32}
    assert done == ["manta_directory_counts", "manta"]
    assert progress and progress[-1]["deleted"] == 35
    # the counts table went first
    assert db.queries[0][0] == "manta_directory_counts"


def test_deleter_skips_done_tables_and_uses_per_table_lists(monkeypatch):
    from psycopg2 import sql
    monkeypatch.setattr(sql.Composed, "as_string", lambda self, ctx: "".join(
        f'"{p.strings[0]}"' if isinstance(p, sql.Identifier) else p.string for p in self._wrapped
        if isinstance(p, (sql.Identifier, sql.SQL))), raising=False)
    db = FakeDb({"a": {1: 5}, "b": {1: 5, 2: 5}})
    d = rr.Deleter(lambda: FakeConn(db), ghosts=[1, 2], batch_size=100, pause=0, connections=1,
                   done_tables=["a"], per_table={"b": [2]})
    d.run(["a", "b"])
    assert db.rows == {"a": {1: 5}, "b": {1: 5, 2: 0}}


def test_split_summary():
    cb = {0: [10, 100], 1: [5, 50], 2: [0, 0]}
    s = rr.split_summary(cb, [0, 1, 2], [0])
    assert s["moving"] == {"vnodes": 1, "rows": 10, "bytes": 100}
    assert s["staying"] == {"vnodes": 2, "rows": 5, "bytes": 50}
