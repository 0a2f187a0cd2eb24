"""`python -m bench [--quick] [--json] [--only KEY ...]`: run the benchmarks, write JSON and Markdown."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .runner import KEY_NAMES, RESULTS, run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small inputs, one repeat (under 3 minutes on 2 cores)")
    ap.add_argument("--json", action="store_true", help="print the JSON report on stdout (progress goes to stderr)")
    ap.add_argument("--only", nargs="+", metavar="KEY", choices=KEY_NAMES,
                    help="measure only these keys (the others are written as null)")
    ap.add_argument("--repeats", type=int, default=None, help="side-by-side repeats (default 1 quick, 3 full)")
    ap.add_argument("--out", type=Path, default=RESULTS, help=f"output folder (default {RESULTS})")
    ap.add_argument("--keep-work", action="store_true", help="keep the scratch folder (frames, daemon logs)")
    args = ap.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        ap.error("--repeats must be at least 1")
    os.environ.setdefault("MPLBACKEND", "Agg")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr if args.json else sys.stdout, flush=True)

    report = run(quick=args.quick, only=args.only, out_dir=args.out, keep_work=args.keep_work,
                 repeats=args.repeats, log=log)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        log((args.out / "latest.md").read_text())
        log(f"written: {args.out / 'latest.json'}, {args.out / 'latest.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
