"""Reward throughput: sandboxed MBPP programs per second, and the math answer checker.

Code: the 128 shortest reference solutions of MBPP sanitized (their own asserts, 3 each on
average), each in its own bubblewrap sandbox with every assert in a forked child, run through
``run_many`` at the default concurrency (cores + 2) and at concurrency 1. Reported: programs/s,
asserts/s, median and p90 seconds per program, and that every one passed (a wrong verdict makes
a throughput number meaningless). Math: ``gsm8k_reward`` calls per second on the 1,319 GSM8K
test golds wrapped as completions.

Data: the MBPP / GSM8K copies that ship with the package (``task.source=bundled``).
Usage: ``python -m bench.rewards_bench [--quick]`` prints JSON; a harness calls ``run(quick)``.
Quick mode: 32 programs, no concurrency-1 pass.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from gbmpo_jax.tasks.data import BUNDLED_DIR, read_rows
from gbmpo_jax.tasks.rewards.math import gsm8k_reward
from gbmpo_jax.tasks.rewards.sandbox import CodeJob, run_many


def _mbpp_jobs(n: int) -> list[CodeJob]:
    rows = read_rows(BUNDLED_DIR / "mbpp" / "sanitized-mbpp.jsonl.gz")
    rows.sort(key=lambda r: (len(r["code"]), r["task_id"]))
    return [
        CodeJob(r["code"], r["test_list"], r["test_setup_code"], r["test_imports"], 5.0)
        for r in rows[:n]
    ]


def _code_case(jobs: list[CodeJob], workers: int | None) -> dict:
    t0 = time.perf_counter()
    res = run_many(jobs, max_workers=workers)
    wall = time.perf_counter() - t0
    per = sorted(r.wall_s for r in res)
    asserts = sum(r.total for r in res)
    return {
        "programs": len(jobs),
        "max_workers": workers or (os.cpu_count() or 1) + 2,
        "wall_s": round(wall, 3),
        "programs_per_s": round(len(jobs) / wall, 2),
        "asserts_per_s": round(asserts / wall, 2),
        "median_s_per_program": round(statistics.median(per), 4),
        "p90_s_per_program": round(per[int(0.9 * (len(per) - 1))], 4),
        "all_passed": all(r.all_passed for r in res),
    }


def _math_case() -> dict:
    golds = [
        r["answer"].split("####")[-1].strip()
        for r in read_rows(BUNDLED_DIR / "gsm8k" / "test.jsonl.gz")
    ]
    comps = [f"Let me work it out step by step: 3 + 4 = 7.\nThe answer is {g}." for g in golds]
    t0 = time.perf_counter()
    correct = sum(gsm8k_reward(c, g) for c, g in zip(comps, golds, strict=True))
    wall = time.perf_counter() - t0
    return {"calls": len(golds), "calls_per_s": round(len(golds) / wall, 1),
            "all_correct": correct == len(golds)}  # fmt: skip


def run(quick: bool) -> dict:
    """Benchmark numbers as a JSON-able dict (see the module docstring)."""
    n = 32 if quick else 128
    jobs = _mbpp_jobs(n)
    out = {"cpu_count": os.cpu_count(), "code_pool": _code_case(jobs, None)}
    if not quick:
        out["code_sequential"] = _code_case(jobs[:32], 1)
    out["math"] = _math_case()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    print(json.dumps(run(ap.parse_args().quick), indent=2))


if __name__ == "__main__":
    main()
