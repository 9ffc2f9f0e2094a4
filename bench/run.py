"""make bench: P1-P10 on this machine; prints one table and writes bench/results/P<n>.json.

python -m bench.run [--only P1,P4]
"""

from __future__ import annotations

import argparse
import json
import time

from bench.common import MACHINE, RESULTS, WORK, prefect_api, write_result


def p5_full_seconds() -> float:
    return float(json.loads((RESULTS / "P5.json").read_text())["seconds"])


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run")
    parser.add_argument(
        "--only", help="comma-separated benchmarks, e.g. P1,P4 (P4, P6, P7 need P2; P3 needs P5)"
    )
    args = parser.parse_args()
    only = {s.strip().upper() for s in args.only.split(",")} if args.only else None
    WORK.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results = []
    with prefect_api():
        from bench import (
            p1_clean_dedup,
            p2_rerun,
            p3_incremental,
            p4_input,
            p5_scale,
            p6_training,
            p7_runtime,
            p8_nightly,
            p9_full,
            p10_month,
        )

        steps = {
            "P1": lambda: p1_clean_dedup.main(),
            "P2": lambda: p2_rerun.main(),
            "P4": lambda: p4_input.main(WORK / "p2"),
            "P6": lambda: p6_training.main(WORK / "p2"),
            "P7": lambda: p7_runtime.main(WORK / "p2"),
            "P5": lambda: p5_scale.main(),
            "P3": lambda: p3_incremental.main(WORK / "p5", WORK / "p5-source", p5_full_seconds()),
            "P8": lambda: p8_nightly.main(),
            "P9": lambda: p9_full.main(),
            "P10": lambda: p10_month.main([]),  # a month of served nights: ~3 h of both cores
        }
        for name, step in steps.items():  # P4, P6 and P7 use P2's workspace, P3 uses P5's
            if only and name not in only:
                continue
            t = time.monotonic()
            result = step()
            if isinstance(result, tuple):
                result = result[0]
            result["bench_seconds"] = round(time.monotonic() - t, 1)
            write_result(RESULTS / f"{name}.json", result)
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
