# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Edits of Manta's shard lists in SAPI application metadata.

``INDEX_MORAY_SHARDS`` (and ``BUCKETS_MORAY_SHARDS``) is an array of
``{"host": "<N>.moray.<DOMAIN_NAME>", "readOnly"?: true, "last"?: true}``
where exactly the final element carries ``"last": true`` (mustache templates
use it to omit the trailing comma). Electric-moray reads ``readOnly`` per
pnode: it is the reshard's write block (reference/reshard.md phases 7, 15).

``manta-shardadm set -i`` rewrites the whole list as bare ``{host}`` entries
and so drops every ``readOnly`` flag. The functions here instead change only
what they are asked to change:

* every entry is copied as is (any extra keys are kept);
* ``last`` is removed from every entry and set on the final one;
* :func:`mark` sets ``readOnly: true`` on, or deletes ``readOnly`` from, the
  named entries only, and only if their state differs;
* :func:`add` appends a missing host at the end; :func:`remove` drops one.

All functions are pure: they return a new list and never touch their input.
"""
from __future__ import annotations

import copy

KEYS = ("INDEX_MORAY_SHARDS", "BUCKETS_MORAY_SHARDS")


class ShardListError(ValueError):
    """The stored list is malformed, or the requested edit is impossible."""


def full_name(name, domain):
    """``2.moray`` -> ``2.moray.<domain>``, as manta-shardadm does: the suffix
    is appended unless the name already ends with it."""
    if not isinstance(name, str) or not name.strip():
        raise ShardListError(f"shard name must be a non-empty string, got {name!r}")
    name = name.strip()
    if not domain:
        return name
    suffix = "." + domain
    return name if name.endswith(suffix) or name == domain else name + suffix


def validate(shards, key="INDEX_MORAY_SHARDS"):
    """Check the stored list: an array of objects with a string ``host``,
    no host twice. Returns the list (``[]`` for an absent key)."""
    if shards is None:
        return []
    if not isinstance(shards, list):
        raise ShardListError(f"{key} must be a JSON array of {{host, readOnly?, last?}}, "
                             f"found {type(shards).__name__}: {shards!r}")
    seen = set()
    for i, entry in enumerate(shards):
        if not isinstance(entry, dict) or not isinstance(entry.get("host"), str) or not entry["host"]:
            raise ShardListError(f"{key}[{i}] must be an object with a string 'host', found {entry!r}")
        if entry["host"] in seen:
            raise ShardListError(f"{key} lists host {entry['host']!r} twice")
        seen.add(entry["host"])
    return shards


def hosts(shards):
    return [e["host"] for e in shards]


def is_read_only(entry):
    return bool(entry.get("readOnly"))


def fix_last(shards):
    """``last: true`` on the final entry only. Entries are copied; an entry
    that is not last loses a true ``last`` and is otherwise left alone."""
    out = []
    for entry in shards:
        e = copy.deepcopy(entry)
        if e.get("last"):
            e.pop("last")
        out.append(e)
    if out:
        out[-1]["last"] = True
    return out


def add(shards, host, read_only=False):
    """Append ``host`` if it is missing (with ``readOnly: true`` if asked)."""
    validate(shards)
    if host in hosts(shards):
        return fix_last(shards)
    entry = {"host": host}
    if read_only:
        entry["readOnly"] = True
    return fix_last(list(shards) + [entry])


def remove(shards, host):
    validate(shards)
    return fix_last([e for e in shards if e["host"] != host])


def mark(shards, names, read_only):
    """Set (``read_only=True``) or clear (``False``) ``readOnly`` on the named
    hosts. Entries already in the wanted state, and all other entries, are
    left exactly as they are. Unknown names raise :class:`ShardListError`."""
    validate(shards)
    wanted = set(names)
    missing = sorted(wanted - set(hosts(shards)))
    if missing:
        raise ShardListError(f"not in the shard list: {', '.join(missing)} "
                             f"(found: {', '.join(hosts(shards)) or 'none'})")
    out = []
    for entry in shards:
        e = copy.deepcopy(entry)
        if e["host"] in wanted and is_read_only(e) != bool(read_only):
            if read_only:
                e["readOnly"] = True
            else:
                e.pop("readOnly", None)
        out.append(e)
    return fix_last(out)


def ensure(shards, names, state="present", read_only=None, missing="add"):
    """The one entry point the module uses.

    * ``state=present``: every name is in the list; a missing one is appended
      (``missing="add"``) or is an error (``missing="fail"``). Then, if
      ``read_only`` is True/False, the named entries are marked accordingly
      (None leaves their flags alone). New entries get ``readOnly: true``
      when ``read_only`` is True.
    * ``state=absent``: the names are removed.

    Returns the new list. Compare it with the old one to know if anything
    changed (``fix_last`` may repair a misplaced ``last`` too).
    """
    shards = validate(shards)
    if state == "absent":
        out = list(shards)
        for name in names:
            out = remove(out, name)
        return fix_last(out)
    if state != "present":
        raise ShardListError(f"state must be present or absent, got {state!r}")
    out = list(shards)
    absent = [n for n in names if n not in hosts(out)]
    if absent and missing == "fail":
        raise ShardListError(f"not in the shard list: {', '.join(absent)} "
                             f"(found: {', '.join(hosts(out)) or 'none'})")
    for name in absent:
        out = add(out, name, read_only=bool(read_only))
    if read_only is not None:
        out = mark(out, names, read_only)
    return fix_last(out)


def summary(shards):
    """``[{"host", "read_only"}]``: what each entry means, for results."""
    return [{"host": e["host"], "read_only": is_read_only(e)} for e in shards or []]
