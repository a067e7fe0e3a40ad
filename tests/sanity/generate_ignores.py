"""Write tests/sanity/ignore-<core>.txt for every module of manta.ops.

The collection is MPL-2.0, so validate-modules reports `missing-gplv3-license`
on every module; that is the one ignore ansible-lint's production profile
accepts (rule `sanity`). Nothing else may be ignored: fix the code instead.

    python tests/sanity/generate_ignores.py          # rewrite the files
    python tests/sanity/generate_ignores.py --check  # exit 1 if out of date
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE_VERSIONS = ("2.21",)
REASON = "collection is MPL-2.0, not GPLv3"


def expected():
    lines = [f"{p.relative_to(ROOT).as_posix()} validate-modules:missing-gplv3-license  # {REASON}"
             for p in sorted((ROOT / "plugins" / "modules").glob("*.py")) if p.name != "__init__.py"]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only verify; exit 1 when a file is stale")
    args = ap.parse_args(argv)
    want = expected()
    stale = []
    for v in CORE_VERSIONS:
        path = ROOT / "tests" / "sanity" / f"ignore-{v}.txt"
        have = path.read_text() if path.exists() else None
        if have != want:
            stale.append(path)
            if not args.check:
                path.write_text(want)
    for path in stale:
        print(f"{'stale' if args.check else 'wrote'}: {path.relative_to(ROOT)}")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
