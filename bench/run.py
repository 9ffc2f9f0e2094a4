"""make bench: P1-P6 on this machine; prints one table and writes bench/results/P<n>.json.

python -m bench.run [--only P1,P4]
"""

from __future__ import annotations

import argparse
import json
import time

from bench.common import MACHINE, RESULTS, WORK, prefect_api


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run")
    parser.add_argument("--only", help="comma-separated benchmarks, e.g. P1,P4 (P4 and P6 need P2)")
    args = parser.parse_args()
    only = {s.strip().upper() for s in args.only.split(",")} if args.only else None
    WORK.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results = []
    with prefect_api():
        from bench import p1_clean_dedup, p2_rerun, p3_incremental, p4_input, p5_scale, p6_training

        ws = None
        for name, step in (
            ("P1", lambda: p1_clean_dedup.main()),
            ("P2", None),
            ("P3", p3_incremental.main),
            ("P4", None),
            ("P5", p5_scale.main),
            ("P6", None),
        ):
            if only and name not in only:
                continue
            t = time.monotonic()
            if name == "P2":
                result, ws = p2_rerun.main()
            elif name in ("P4", "P6"):
                if ws is None:
                    ws = WORK / "p2"  # an earlier P2 run's workspace
                result = (p4_input.main if name == "P4" else p6_training.main)(ws)
            else:
                result = step()
            result["bench_seconds"] = round(time.monotonic() - t, 1)
            (RESULTS / f"{name}.json").write_text(
                json.dumps(result, indent=2, sort_keys=True, default=str) + "\n"
            )
            results.append(result)
            print(f"{name} done in {result['bench_seconds']:.0f}s: {result['figure']}", flush=True)
    print(f"\npawflow benchmarks on {MACHINE}, {time.monotonic() - started:.0f}s in all\n")
    print(f"{'':4} {'met':5} {'figure':<95} target")
    for r in results:
        met = {True: "yes", False: "NO", None: "-"}[r["met"]]
        print(f"{r['benchmark']:4} {met:5} {r['figure']:<95} {r['target']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
