"""The moray database of every lab shard, as Moray and libmanta create it.

This is the one place the lab's DDL lives. Buckets are described the way
Moray's ``putBucket`` receives them (``index`` of typed fields, ``options``),
and turned into tables with Moray's rules:

- table ``<bucket>`` with the fixed columns ``_id, _txn_snap, _key, _value,
  _etag, _mtime, _vnode`` followed by one column per index field, in the
  bucket's index order (names lower-cased by PostgreSQL: ``objectId`` is
  ``objectid``); ``_key`` is the primary key; ``_id`` draws from the
  sequence ``<bucket>_serial``;
- one ``CREATE INDEX <bucket>_<field>_idx ON <bucket> USING BTREE (<field>)
  WHERE <field> IS NOT NULL`` per non-unique index field, then for ``_id``,
  ``_etag``, ``_mtime`` and ``_vnode`` (unique fields get a UNIQUE column);
- one row per bucket in ``buckets_config`` (name, index, pre, post, options).

The ``manta`` table's columns are therefore exactly
``_id, _txn_snap, _key, _value, _etag, _mtime, _vnode, dirname, name, owner,
objectid, type`` (reference/evacuate.md §1.2). libmanta's PostgreSQL trigger
``count_directories`` keeps ``manta_directory_counts`` (one row per directory,
``entries``) on every INSERT/DELETE into ``manta`` (reshard.md §4).
``manta_storage`` (minnow heartbeats, written without a vnode) exists on the
storage shard only (``STORAGE_MORAY_SHARD``, shard 1 in the lab).

    statements(storage=False)      every statement, in order
    bucket_ddl(name, index)        CREATE TABLE + indexes of one bucket
    COLUMNS[bucket]                column names, in table order
    INDEX_COLUMNS[bucket]          columns that carry a btree index
"""
import hashlib
import json

DB = "moray"
ROLE = "moray"

FIXED_COLUMNS = ["_id", "_txn_snap", "_key", "_value", "_etag", "_mtime", "_vnode"]
FIXED_INDEXES = ["_id", "_etag", "_mtime", "_vnode"]
PG_TYPES = {"string": "TEXT", "number": "NUMERIC", "boolean": "BOOLEAN", "inet": "INET",
            "[string]": "TEXT[]", "[number]": "NUMERIC[]", "[boolean]": "BOOLEAN[]",
            "[inet]": "INET[]"}

# Buckets as libmanta (setupMantaBuckets) and minnow create them.
BUCKETS = {
    "manta": {
        "index": {"dirname": {"type": "string"}, "name": {"type": "string"},
                  "owner": {"type": "string"}, "objectId": {"type": "string"},
                  "type": {"type": "string"}},
        "options": {"version": 2},
        "post": ["function recordDeleteLog(req, cb) { /* libmanta; runs in moray */ }"],
    },
    "manta_directory_counts": {
        "index": {"entries": {"type": "number"}},
        "options": {"version": 1},
    },
    "manta_uploads": {
        "index": {"finalizingType": {"type": "string"}, "uploadId": {"type": "string"}},
        "options": {"version": 1},
    },
    "manta_delete_log": {
        "index": {"objectId": {"type": "string"}},
        "options": {"version": 1},
    },
    "manta_fastdelete_queue": {
        "index": {},
        "options": {"version": 1},
    },
}
STORAGE_BUCKETS = {
    "manta_storage": {
        "index": {"hostname": {"type": "string"}, "availableMB": {"type": "number"},
                  "percentUsed": {"type": "number"}, "server_uuid": {"type": "string"},
                  "timestamp": {"type": "number"}, "zone_uuid": {"type": "string"},
                  "manta_compute_id": {"type": "string"},
                  "manta_storage_id": {"type": "string"}},
        "options": {"version": 1},
    },
}

BUCKETS_CONFIG_DDL = (
    "CREATE TABLE buckets_config (\n"
    "    name TEXT PRIMARY KEY,\n"
    "    index TEXT NOT NULL,\n"
    "    pre TEXT NOT NULL,\n"
    "    post TEXT NOT NULL,\n"
    "    options TEXT,\n"
    "    mtime TIMESTAMP WITHOUT TIME ZONE DEFAULT now() NOT NULL,\n"
    "    reindex_active TEXT\n"
    ")")

# libmanta's directory-count trigger (trigger_dircount.plpgsql, version 3), in
# PostgreSQL 15 terms: count rows are created with an empty value, the etag
# '_trigger' and the entry's vnode; the row goes when its last entry does.
DIRCOUNT_FUNCTION = """CREATE FUNCTION count_manta_directories_v3() RETURNS TRIGGER AS $fn$
DECLARE
    remaining NUMERIC;
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO manta_directory_counts (_key, _value, _etag, _vnode, entries)
            VALUES (NEW.dirname, '{}', '_trigger', NEW._vnode, 1)
            ON CONFLICT (_key) DO UPDATE
            SET entries = manta_directory_counts.entries + 1;
        RETURN NULL;
    END IF;
    SELECT entries INTO remaining FROM manta_directory_counts
        WHERE _key = OLD.dirname FOR UPDATE;
    IF remaining IS NULL THEN
        RETURN NULL;
    ELSIF remaining <= 1 THEN
        DELETE FROM manta_directory_counts WHERE _key = OLD.dirname;
    ELSE
        UPDATE manta_directory_counts SET entries = entries - 1 WHERE _key = OLD.dirname;
    END IF;
    RETURN NULL;
END;
$fn$ LANGUAGE plpgsql"""
DIRCOUNT_TRIGGER = ("CREATE TRIGGER count_directories AFTER INSERT OR DELETE ON manta "
                    "FOR EACH ROW EXECUTE PROCEDURE count_manta_directories_v3()")


def _col(field):
    return field.lower()


def columns(index):
    return FIXED_COLUMNS + [_col(k) for k in index]


def index_columns(index):
    return [_col(k) for k, v in index.items() if not v.get("unique")] + FIXED_INDEXES


def bucket_ddl(name, index):
    """Moray's createBucket DDL for one bucket: sequence, table, indexes."""
    cols = "".join(f", {_col(k)} {PG_TYPES[v['type']]}{' UNIQUE' if v.get('unique') else ''}"
                   for k, v in index.items())
    out = [
        f"CREATE SEQUENCE {name}_serial",
        (f"CREATE TABLE {name} ("
         f"_id BIGINT DEFAULT nextval('{name}_serial'), "
         "_txn_snap INTEGER, "
         "_key TEXT PRIMARY KEY, "
         "_value TEXT NOT NULL, "
         "_etag CHAR(8) NOT NULL, "
         "_mtime BIGINT DEFAULT CAST(EXTRACT(EPOCH FROM NOW()) * 1000 AS BIGINT) NOT NULL, "
         f"_vnode BIGINT{cols})"),
        f"ALTER SEQUENCE {name}_serial OWNED BY {name}._id",
    ]
    for c in index_columns(index):
        out.append(f"CREATE INDEX {name}_{c}_idx ON {name} USING BTREE ({c}) WHERE {c} IS NOT NULL")
    return out


def _q(text):
    return "'" + text.replace("'", "''") + "'"


def _config_row(name, b):
    return ("INSERT INTO buckets_config (name, index, pre, post, options) VALUES ("
            f"{_q(name)}, {_q(json.dumps(b['index'], separators=(',', ':')))}, "
            f"{_q(json.dumps(b.get('pre', [])))}, {_q(json.dumps(b.get('post', [])))}, "
            f"{_q(json.dumps(b['options'], separators=(',', ':')))})")


def buckets(storage=False):
    out = dict(BUCKETS)
    if storage:
        out.update(STORAGE_BUCKETS)
    return out


def statements(storage=False):
    """Every statement that builds the moray database's contents, in order.

    Run them connected to database ``moray`` as role ``moray`` (the owner)."""
    out = [BUCKETS_CONFIG_DDL]
    for name, b in buckets(storage).items():
        out += bucket_ddl(name, b["index"])
        out.append(_config_row(name, b))
    out += [DIRCOUNT_FUNCTION, DIRCOUNT_TRIGGER]
    return out


def digest(storage=False):
    return hashlib.sha256("\n".join(statements(storage)).encode()).hexdigest()[:16]


COLUMNS = {name: columns(b["index"]) for name, b in buckets(True).items()}
INDEX_COLUMNS = {name: index_columns(b["index"]) for name, b in buckets(True).items()}
