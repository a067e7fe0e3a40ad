"""A ring directory's stamp and content digest: read both by the ring publisher (ring.py) and by every
electric-moray at start. Standard library only at import (plyvel is loaded when a digest is asked for), so
the router's restart path stays lean."""
import hashlib
import json
from pathlib import Path

STAMP = "manta_hash_ring_stamp.json"


def read_stamp(ring_dir):
    """hash_ring/manta_hash_ring_stamp.json of a ring directory, or None."""
    try:
        return json.loads(Path(ring_dir, STAMP).read_text())
    except (OSError, ValueError):
        return None


def ring_digest(ring_dir):
    """sha256 over every (key, value) of a closed LevelDB ring, in key order:
    the same ring content gives the same digest whatever its files look like."""
    import plyvel
    h = hashlib.sha256()
    db = plyvel.DB(str(ring_dir), create_if_missing=False)
    try:
        for k, v in db.iterator():
            h.update(len(k).to_bytes(4, "big") + k + len(v).to_bytes(4, "big") + v)
    finally:
        db.close()
    return h.hexdigest()
