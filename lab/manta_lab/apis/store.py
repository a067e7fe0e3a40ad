"""Persistence for the lab APIs: one SQLite database plus image files.

``<home>/apis/apis.db`` holds every object as a JSON value in one table,
keyed by (bucket, uuid), the way SAPI, IMGAPI and VMAPI keep theirs in Moray
buckets. A write is a SQLite transaction (``with store.tx():``), so a request
either changes everything it means to or nothing. Listing order is creation
order (the row id survives updates).

Image files live in ``<home>/apis/images/<uuid>/file0``; they are written to
a temporary file in the same directory and renamed into place, so a reader
never sees a half-written file.
"""
import hashlib
import json
import os
import sqlite3
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

BUCKETS = ("sapi_applications", "sapi_services", "sapi_instances", "sapi_manifests",
           "imgapi_images", "vmapi_vms", "vmapi_jobs", "meta")


class Store:
    def __init__(self, root):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "images").mkdir(exist_ok=True)
        self._lock = threading.RLock()
        self._depth = 0
        self.db = sqlite3.connect(str(self.root / "apis.db"), check_same_thread=False,
                                  isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS objects ("
                        " bucket TEXT NOT NULL, uuid TEXT NOT NULL, value TEXT NOT NULL,"
                        " PRIMARY KEY (bucket, uuid))")

    def close(self):
        with self._lock:
            self.db.close()

    # ---- transactions ------------------------------------------------------
    @contextmanager
    def tx(self):
        """A write transaction; nested uses join the outer one."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self
                finally:
                    self._depth -= 1
                return
            self.db.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self
            except BaseException:
                self._depth = 0
                self.db.execute("ROLLBACK")
                raise
            self._depth = 0
            self.db.execute("COMMIT")

    # ---- objects ------------------------------------------------------------
    def get(self, bucket, uuid):
        with self._lock:
            row = self.db.execute("SELECT value FROM objects WHERE bucket=? AND uuid=?",
                                  (bucket, uuid)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, bucket, uuid, value):
        data = json.dumps(value, sort_keys=False)
        with self.tx():
            self.db.execute("INSERT INTO objects (bucket, uuid, value) VALUES (?, ?, ?)"
                            " ON CONFLICT(bucket, uuid) DO UPDATE SET value=excluded.value",
                            (bucket, uuid, data))

    def delete(self, bucket, uuid):
        with self.tx():
            cur = self.db.execute("DELETE FROM objects WHERE bucket=? AND uuid=?", (bucket, uuid))
            return cur.rowcount > 0

    def list(self, bucket):
        with self._lock:
            rows = self.db.execute("SELECT value FROM objects WHERE bucket=? ORDER BY rowid",
                                   (bucket,)).fetchall()
        return [json.loads(r[0]) for r in rows]

    # ---- image files --------------------------------------------------------
    def image_file(self, uuid):
        return self.root / "images" / uuid / "file0"

    def receive_file(self, uuid, chunks, max_size):
        """Write an upload to a temporary file beside its final place.

        ``chunks`` yields bytes. Returns (tmp_path, size, sha1, md5_b64);
        the caller commits it with ``commit_file`` or drops it with
        ``drop_tmp``. Raises ValueError when the upload exceeds max_size.
        """
        d = self.root / "images" / uuid
        d.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=str(d))
        sha1, md5, size = hashlib.sha1(), hashlib.md5(), 0
        try:
            with os.fdopen(fd, "wb") as fh:
                for chunk in chunks:
                    size += len(chunk)
                    if size > max_size:
                        raise ValueError(f"file is larger than the maximum of {max_size} bytes")
                    sha1.update(chunk)
                    md5.update(chunk)
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            os.unlink(tmp)
            raise
        import base64
        return tmp, size, sha1.hexdigest(), base64.b64encode(md5.digest()).decode()

    def commit_file(self, uuid, tmp):
        os.replace(tmp, self.image_file(uuid))

    @staticmethod
    def drop_tmp(tmp):
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass

    def delete_files(self, uuid):
        d = self.root / "images" / uuid
        if d.exists():
            for f in d.iterdir():
                f.unlink()
            d.rmdir()
