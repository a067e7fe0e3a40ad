# -*- coding: utf-8 -*-
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""``manta-fash``: a drop-in for node-fash's ``fash`` command (reference/fash.md §5.2-5.3).

Same subcommands and flags, same ring bytes; differences, all deliberate:

* output is JSON (one document per line) instead of Node's ``util.inspect``;
* vnode lists may be of any length: ``-v -`` reads them from stdin,
  ``-v @FILE`` from a file; ``a-b`` ranges are accepted;
* bad input fails before anything is written (node-fash silently skips bad
  list items and stops half-way on errors); a multi-vnode change is one
  atomic LevelDB batch;
* errors are printed once, on stderr, as ``manta-fash: error: ...``;
* without ``-b``, a ``-l`` that is a directory selects the LevelDB backend.
"""
from __future__ import annotations

import argparse
import os
import sys

from .errors import RingError, RingInputError
from .hashing import normalize_algorithm
from .jsenc import js_dumps
from .leveldb_store import open_ring
from .ring_writer import create_ring, write_topology
from .ops.diff import diff_rings, node_style_diff
from .routing import transform_key
from .topology import Topology
from .vnodes import parse_vnodes, split_list

BACKENDS = ("memory", "leveldb")


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        sys.stderr.write("%s: error: %s\n" % (self.prog, message))
        raise _UsageError(message)


def _out(obj):
    sys.stdout.write(js_dumps(obj) + "\n")


def _read_text(source):
    if source in (None, "-"):
        return sys.stdin.read()
    with open(source, "r", encoding="utf-8") as fh:
        return fh.read()


def _vnode_arg(values):
    """The ``-v`` values: lists split on commas/blanks, ``-`` for stdin, ``@FILE`` for a file."""
    items = []
    for value in values or []:
        if value == "-":
            items.extend(split_list(sys.stdin.read()))
        elif value.startswith("@"):
            items.extend(split_list(_read_text(value[1:])))
        else:
            items.extend(split_list(value))
    return items


def _pnode_arg(values):
    out = []
    for value in values or []:
        out.extend(split_list(value))
    return out


def _backend(args, location=None):
    b = args.backend[0] if isinstance(args.backend, list) and args.backend else args.backend
    location = args.location if location is None else location
    if b is None:
        return "leveldb" if location and os.path.isdir(location) else "memory"
    if b not in BACKENDS:
        raise RingInputError("backend must be one of memory or leveldb (got %r)" % (b,))
    return b


def _need_location(args):
    if not args.location:
        raise RingInputError("-l/--location (the LevelDB ring directory) is required with -b leveldb")
    return args.location


def _load_memory(location):
    return Topology.from_json(_read_text(location))


class _MemoryRing(object):
    """The memory backend: a Topology read from ``-l FILE`` or stdin, never written back (as node-fash)."""

    def __init__(self, location):
        self.topo = _load_memory(location)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __getattr__(self, name):
        return getattr(self.topo, name)

    def remap(self, vnodes, pnode, strict=True, strict_pnode=True):
        return self.topo.remap(vnodes, pnode, strict=strict, strict_pnode=strict_pnode)

    def set_data(self, vnodes, data):
        return self.topo.set_data(vnodes, data)

    def remove_pnode(self, pnode):
        return self.topo.remove_pnode(pnode)

    def to_json(self, include_empty=True):
        return self.topo.to_json(include_empty)

    def get_vnode(self, v):
        return self.topo.pnode_of(v), self.topo.data_of(v)


def _ring(args, readonly):
    if _backend(args) == "leveldb":
        return open_ring(_need_location(args), readonly=readonly)
    return _MemoryRing(args.location)


def _print_ring(ring, args):
    sys.stdout.write(ring.to_json(include_empty=not getattr(args, "omit_empty", False)) + "\n")


# ---------------------------------------------------------------------- commands
def cmd_create(args):
    pnodes = _pnode_arg(args.pnode)
    if args.vnode is None:
        raise RingInputError("-v/--vnode (the number of vnodes) is required")
    try:
        vnodes = int(args.vnode, 10)
    except ValueError:
        raise RingInputError("-v %r is not an integer; the vnode count must be a positive integer"
                             % (args.vnode,)) from None
    algorithm = normalize_algorithm(args.algorithm)
    backend = args.backend or ("leveldb" if args.location else "memory")
    if backend not in BACKENDS:
        raise RingInputError("backend must be one of memory or leveldb (got %r)" % (backend,))
    if backend == "memory":
        topo = Topology.create(pnodes, vnodes, algorithm, strict_pnodes=not args.any_pnode)
        if args.output:
            _print_ring(topo, args)
        return 0
    if args.any_pnode:
        write_topology(Topology.create(pnodes, vnodes, algorithm), _need_location(args), sst=args.sst,
                       strict_pnodes=False)
    else:
        create_ring(_need_location(args), pnodes, vnodes, algorithm, sst=args.sst)
    if args.output:
        with open_ring(args.location, readonly=True) as ring:
            _print_ring(ring, args)
    return 0


def cmd_deserialize_ring(args):
    location = _need_location(args)
    topo = Topology.from_json(_read_text(args.file))
    write_topology(topo, location, sst=args.sst, strict_pnodes=not args.any_pnode)
    return 0


def cmd_add_data(args):
    items = _vnode_arg(args.vnode)
    if not items:
        raise RingInputError("-v/--vnode (the vnodes to add data to) is required")
    data = args.data if args.data else None   # a missing or empty -d clears, as in fash >= 2.4.1
    with _ring(args, readonly=False) as ring:
        vnodes = parse_vnodes(items, ring.vnode_count)
        ring.set_data(vnodes, data)
        if not args.quiet:
            shown = "1" if data is None else data
            sys.stdout.write("".join(js_dumps({str(v): shown}) + "\n" for v in vnodes))
        if args.output:
            _print_ring(ring, args)
    return 0


def cmd_remap_vnode(args):
    items = _vnode_arg(args.vnode)
    if not items:
        raise RingInputError("-v/--vnode (the vnodes to remap) is required")
    if not args.pnode:
        raise RingInputError("-p/--pnode (the pnode to remap the vnodes to) is required")
    with _ring(args, readonly=False) as ring:
        vnodes = parse_vnodes(items, ring.vnode_count)
        moved = ring.remap(vnodes, args.pnode, strict=not args.skip_owned, strict_pnode=not args.any_pnode)
        if not args.quiet:
            sys.stdout.write("".join(js_dumps({args.pnode: str(v)}) + "\n" for v in moved))
        if args.output:
            _print_ring(ring, args)
    return 0


def cmd_remove_pnode(args):
    if not args.pnode:
        raise RingInputError("-p/--pnode (the pnode to remove) is required")
    with _ring(args, readonly=False) as ring:
        ring.remove_pnode(args.pnode)
        if args.output:
            _print_ring(ring, args)
    return 0


def cmd_get_pnodes(args):
    with _ring(args, readonly=True) as ring:
        _out(ring.pnodes())
    return 0


def cmd_get_vnodes(args):
    with _ring(args, readonly=True) as ring:
        _out(ring.vnodes_of(args.pnode))
    return 0


def cmd_get_vnode_pnode_and_data(args):
    items = _vnode_arg((args.vnodes or []) + list(args.more))
    if not items:
        raise RingInputError("-v/--vnodes (the vnodes to inspect) is required")
    with _ring(args, readonly=True) as ring:
        out = {}
        for v in parse_vnodes(items, ring.vnode_count, allow_duplicates=True):
            pnode, data = ring.get_vnode(v)
            out[str(v)] = {"pnode": pnode, "vnodeData": data}
    _out({"vnodes": out})
    return 0


def cmd_get_data_vnodes(args):
    with _ring(args, readonly=True) as ring:
        data = ring.data_vnodes()
        out = {"vnodeArray": list(data)}
        if args.verbose:
            out["vnodes"] = {str(v): {"pnode": ring.get_vnode(v)[0], "vnodeData": d} for v, d in data.items()}
    _out(out)
    return 0


def cmd_get_node(args):
    if not args.keys:
        raise RingInputError("a value (the key to hash) is required")
    with _ring(args, readonly=True) as ring:
        for key in args.keys:
            hashed = transform_key(args.bucket, key) if args.bucket else key
            pnode, vnode, data = ring.get_node(hashed)
            _out({"pnode": pnode, "vnode": vnode, "data": data})
    return 0


def cmd_print_hash(args):
    with _ring(args, readonly=True) as ring:
        _print_ring(ring, args)
    return 0


def cmd_diff(args):
    backends = list(args.backend or [])
    if len(backends) > 2:
        raise RingInputError("-b may be given at most twice (one backend per ring)")
    topos = []
    for i, location in enumerate((args.ring1, args.ring2)):
        b = backends[min(i, len(backends) - 1)] if backends else "memory"
        if b not in BACKENDS:
            raise RingInputError("backend must be one of memory or leveldb (got %r)" % (b,))
        if b == "leveldb":
            if location == "-":
                raise RingInputError("'-' (stdin) is only valid with the memory backend")
            with open_ring(location, readonly=True) as ring:
                topos.append(ring.topology())
        else:
            topos.append(_load_memory(location))
    if args.detail:
        _out(diff_rings(topos[0], topos[1], with_vnodes=not args.no_vnodes))
        return 0
    out = node_style_diff(topos[0], topos[1])
    if out:
        _out(out)
    return 0


def cmd_verify(args):
    with open_ring(_need_location(args), readonly=not args.repair) as ring:
        fixes = ring.repair() if args.repair else []
        problems = ring.verify()
    out = {"ok": not problems, "problems": problems}
    if args.repair:
        out["repaired"] = fixes
    _out(out)
    return 0 if not problems else 1


# ---------------------------------------------------------------------- parser
def _common(p, backend=True, location=True, output=False):
    if location:
        p.add_argument("-l", "--location", help="the LevelDB ring directory, or for -b memory the JSON file "
                       "(stdin when absent)")
    if backend:
        p.add_argument("-b", "--backend", help="leveldb or memory (default: leveldb when -l is a directory)")
    if output:
        p.add_argument("-o", "--output", action="store_true", help="print the resulting ring as JSON")
        p.add_argument("--omit-empty", action="store_true",
                       help="leave pnodes without vnodes out of the printed ring (node-fash deserialize-ring "
                            "hangs on them)")


def build_parser():
    parser = _Parser(prog="manta-fash", description="node-fash compatible consistent-hash ring tool "
                     "(LevelDB rings byte-identical to node-fash 3.0.x; JSON output).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("create", help="create a consistent hash ring")
    p.add_argument("-v", "--vnode", help="number of vnodes")
    p.add_argument("-p", "--pnode", action="append", help="physical node names (comma/space separated, repeatable)")
    p.add_argument("-a", "--algorithm", default="sha256", help="sha256 (default), sha1 or md5")
    _common(p, output=True)
    p.add_argument("--sst", action="store_true", help="name table files .sst (readable by mantav1's LevelDB 1.11)")
    p.add_argument("--any-pnode", action="store_true", help="accept pnode names that are not tcp://host:port")
    p.set_defaults(func=cmd_create)

    p = sub.add_parser("deserialize-ring", help="load a serialized (JSON) ring into LevelDB; stdin or -f FILE")
    p.add_argument("-l", "--location", help="the LevelDB directory to create")
    p.add_argument("-f", "--file", help="the serialized topology (default: stdin)")
    p.add_argument("--sst", action="store_true", help="name table files .sst (readable by mantav1's LevelDB 1.11)")
    p.add_argument("--any-pnode", action="store_true", help="accept pnode names that are not tcp://host:port")
    p.set_defaults(func=cmd_deserialize_ring)

    p = sub.add_parser("add-data", help="add data to vnodes (no or empty -d removes it)")
    p.add_argument("-v", "--vnode", action="append", help="vnodes: '1,2 3', 'a-b', '-' (stdin) or @FILE")
    p.add_argument("-d", "--data", help="the data (a string, e.g. ro); absent or empty clears")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print one line per vnode")
    _common(p, output=True)
    p.set_defaults(func=cmd_add_data)

    p = sub.add_parser("remap-vnode", help="remap vnodes to a (possibly new) pnode")
    p.add_argument("-v", "--vnode", action="append", help="vnodes: '1,2 3', 'a-b', '-' (stdin) or @FILE")
    p.add_argument("-p", "--pnode", help="the pnode to remap the vnodes to")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print one line per vnode")
    p.add_argument("--skip-owned", action="store_true",
                   help="skip vnodes already on the pnode instead of failing (node-fash fails)")
    p.add_argument("--any-pnode", action="store_true", help="accept a pnode name that is not tcp://host:port")
    _common(p, output=True)
    p.set_defaults(func=cmd_remap_vnode)

    p = sub.add_parser("remove-pnode", help="remove a pnode that has no vnodes")
    p.add_argument("-p", "--pnode", help="the pnode being removed")
    _common(p, output=True)
    p.set_defaults(func=cmd_remove_pnode)

    p = sub.add_parser("get-pnodes", help="get all the pnodes in the ring")
    _common(p)
    p.set_defaults(func=cmd_get_pnodes)

    p = sub.add_parser("get-vnodes", help="get the vnodes owned by a pnode")
    _common(p)
    p.add_argument("pnode")
    p.set_defaults(func=cmd_get_vnodes)

    p = sub.add_parser("get-vnode-pnode-and-data", help="get the pnode and data of vnodes")
    p.add_argument("-v", "--vnodes", action="append", help="vnodes: '1,2 3', 'a-b', '-' (stdin) or @FILE")
    p.add_argument("-l", "--location", help="the LevelDB ring directory")
    p.add_argument("-b", "--backend", help=argparse.SUPPRESS)
    p.add_argument("more", nargs="*", metavar="vnode", help="more vnodes")
    p.set_defaults(func=cmd_get_vnode_pnode_and_data)

    p = sub.add_parser("get-data-vnodes", help="get the vnodes that hold data")
    p.add_argument("-v", "--verbose", action="store_true", help="also print each vnode's pnode and data")
    p.add_argument("-l", "--location", help="the LevelDB ring directory")
    p.add_argument("-b", "--backend", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_get_data_vnodes)

    p = sub.add_parser("get-node", help="hash values to their spot on the ring")
    _common(p)
    p.add_argument("--bucket", help="apply electric-moray's key transform for this bucket first (e.g. manta)")
    p.add_argument("keys", nargs="*", metavar="value")
    p.set_defaults(func=cmd_get_node)

    p = sub.add_parser("print-hash", help="print the ring as JSON (every vnode, deterministic order)")
    _common(p)
    p.add_argument("--omit-empty", action="store_true", help="leave out pnodes without vnodes")
    p.set_defaults(func=cmd_print_hash)

    p = sub.add_parser("diff", help="compare two rings ('-' reads stdin, memory backend only)")
    p.add_argument("-b", "--backend", action="append", help="backend of the rings; give twice for ring2's")
    p.add_argument("--detail", action="store_true", help="print moved vnodes by source -> destination and "
                   "data changes instead of node-fash's per-pnode form")
    p.add_argument("--no-vnodes", action="store_true", help="with --detail, print ranges only")
    p.add_argument("ring1")
    p.add_argument("ring2")
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("verify", help="check a LevelDB ring's consistency (extension)")
    p.add_argument("-l", "--location", help="the LevelDB ring directory")
    p.add_argument("--repair", action="store_true", help="first rebuild lost /PNODE/<p> lists, /PNODE entries "
                   "and VNODE_DATA from /VNODE (node-fash's create race); routing keys are never changed")
    p.set_defaults(func=cmd_verify)
    return parser


def main(argv=None):
    """Run ``manta-fash``; returns the exit status (0 success, 1 error or bad usage)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError:
        return 1
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 1
    try:
        return args.func(args)
    except (RingError, OSError) as exc:
        sys.stderr.write("manta-fash: error: %s\n" % exc)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
