# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Which tables of a Moray database are sharded, and how their rows are keyed.

Every Moray bucket is a table in schema ``public`` with a ``_vnode`` column
(reference/evacuate.md §1.2). A bucket is *sharded* when electric-moray
writes it, which fills ``_vnode``; buckets written straight to one Moray
(``manta_storage``, ``marlin_*``, the reshard sentinel) leave it NULL, so
rows of a vnode can only ever be in tables with a ``_vnode`` column.

For each such table this reports:

* ``has_id``: the ``_id`` column (Moray's serial, always present in practice);
* ``has_idx`` / ``idx_index``: the ``_idx`` column of *extended ids*
  (MANTA-3721: new rows get ``_idx`` and a NULL ``_id``) and whether the valid
  index ``<table>__idx_idx`` exists. Rows keyed by ``_idx`` are deleted by
  ``_idx`` only when that index exists (as the reshard service did), otherwise
  by ``_key``;
* ``sharded``: at least one row has a non-NULL ``_vnode`` (answered by the
  partial ``<table>__vnode_idx`` index, so it costs one index probe);
* ``estimated_rows``: ``pg_class.reltuples`` (planner statistics).

``delete_order`` puts ``manta_directory_counts`` first: libmanta's trigger
on ``manta`` updates the count row of the parent directory on every delete
and does nothing when that row is gone, so purging the counts first makes
the ``manta`` deletes cheap and leaves no count rows behind (reshard.md §4).
"""
from __future__ import annotations

from ansible_collections.manta.ops.plugins.module_utils.moray_pg import sql

SCHEMA = "public"
COUNTS_TABLE = "manta_directory_counts"


class TableError(Exception):
    """A requested table cannot be used; nothing was changed."""


class TableInfo:
    __slots__ = ("name", "has_id", "has_idx", "idx_index", "has_value", "estimated_rows", "sharded")

    def __init__(self, name, has_id=True, has_idx=False, idx_index=False, has_value=True,
                 estimated_rows=0, sharded=None):
        self.name = name
        self.has_id = has_id
        self.has_idx = has_idx
        self.idx_index = idx_index
        self.has_value = has_value
        self.estimated_rows = estimated_rows
        self.sharded = sharded

    @property
    def extended_ids(self):
        """Extended ids in use the way MANTA-3721 detects them: column and valid index."""
        return self.has_idx and self.idx_index

    def ident(self):
        return sql.Identifier(SCHEMA, self.name)

    def to_result(self):
        return {"name": self.name, "extended_ids": self.extended_ids, "has_idx_column": self.has_idx,
                "estimated_rows": self.estimated_rows, "sharded": self.sharded}

    def __repr__(self):
        return f"TableInfo({self.name!r}, extended_ids={self.extended_ids}, sharded={self.sharded})"


_LIST_SQL = """
SELECT c.relname,
       EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = '_vnode'
               AND NOT a.attisdropped AND a.attnum > 0) AS has_vnode,
       EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = '_id'
               AND NOT a.attisdropped AND a.attnum > 0) AS has_id,
       EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = '_idx'
               AND NOT a.attisdropped AND a.attnum > 0) AS has_idx,
       EXISTS (SELECT 1 FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
               WHERE i.indrelid = c.oid AND ic.relname = c.relname || '__idx_idx'
               AND i.indisvalid) AS idx_index,
       EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = '_value'
               AND NOT a.attisdropped AND a.attnum > 0) AS has_value,
       EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = '_key'
               AND NOT a.attisdropped AND a.attnum > 0) AS has_key,
       greatest(c.reltuples, 0)::bigint AS estimated_rows
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = %s AND c.relkind IN ('r', 'p')
 ORDER BY c.relname
"""


def _all_tables(conn):
    cur = conn.cursor()
    cur.execute(_LIST_SQL, (SCHEMA,))
    return cur.fetchall()


def _is_sharded(conn, name):
    cur = conn.cursor()
    cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE _vnode IS NOT NULL)").format(
        sql.Identifier(SCHEMA, name)))
    return bool(cur.fetchone()[0])


def discover(conn, requested=None, database="moray"):
    """TableInfo for every table with a ``_vnode`` column (or just ``requested``), by name.

    Raises :class:`TableError` naming a requested table that does not exist
    or has no ``_vnode`` column, and listing the tables that would be valid.
    Every returned table has ``sharded`` filled in.
    """
    rows = _all_tables(conn)
    all_names = {r[0] for r in rows}
    with_vnode = {}
    for name, has_vnode, has_id, has_idx, idx_index, has_value, has_key, est in rows:
        if has_vnode and has_key:
            with_vnode[name] = TableInfo(name, has_id=has_id, has_idx=has_idx, idx_index=idx_index,
                                         has_value=has_value, estimated_rows=int(est))
    valid = ", ".join(sorted(with_vnode)) or "(none)"
    if requested:
        out = []
        seen = set()
        for name in requested:
            if not isinstance(name, str) or not name:
                raise TableError(f"table {name!r} is not a table name; tables with a _vnode "
                                 f"column in database {database}: {valid}")
            if name in seen:
                continue
            seen.add(name)
            if name not in all_names:
                raise TableError(f"table {name!r} does not exist in database {database} (schema "
                                 f"{SCHEMA}); tables with a _vnode column there: {valid}")
            if name not in with_vnode:
                raise TableError(f"table {name!r} has no _vnode column (and _key), so it is not a "
                                 f"sharded Moray bucket and holds no rows of any vnode; tables "
                                 f"with a _vnode column in database {database}: {valid}")
            out.append(with_vnode[name])
    else:
        out = list(with_vnode.values())
    for t in out:
        t.sharded = _is_sharded(conn, t.name)
    return {t.name: t for t in out}


def delete_order(names):
    """``manta_directory_counts`` first, then alphabetical (reshard.md §4)."""
    names = sorted(set(names))
    if COUNTS_TABLE in names:
        names.remove(COUNTS_TABLE)
        names.insert(0, COUNTS_TABLE)
    return names


def key_columns(table):
    """The batch key columns, in the order rows are deleted by them: ``_id``, then ``_idx``
    (only with a valid ``<t>__idx_idx`` index), then ``_key`` for rows with neither."""
    cols = []
    if table.has_id:
        cols.append("_id")
    if table.extended_ids:
        cols.append("_idx")
    cols.append("_key")
    return cols
