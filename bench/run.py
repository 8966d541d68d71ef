"""`make bench`: every benchmark section in one run, one JSON document, one dated BENCHMARKS.md row.

Sections (each a module with ``run(quick) -> dict``; order = default order):
  step      full GBMPO step (rollout, old+reference log-probs, update) vs TRL GRPOTrainer
  sampling  rollout tokens/s vs transformers generate, same weights
  rewards   sandboxed MBPP programs/s, math reward calls/s
  es        ES outer loop (bench/es_bench.py; reported "missing" if that module is absent)

Output: ``{"schema", "quick", "machine", "sections": {name: {"status": ok|error|missing,
"wall_s", "result" | "error"}}, "summary", "peak_rss_mb"}`` on stdout (``--out`` also writes
it to a file, rewritten after each section as ``{"partial": true, "sections"}``). A full run appends one row to BENCHMARKS.md (``--no-record`` skips it; quick
runs never record). Exit status 1 if a section raised (its traceback goes to stderr).

Usage: ``python -m bench.run [--quick] [--sections step,sampling] [--out FILE] [--no-record]``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pathlib
import sys
import time
import traceback

from bench import common

SCHEMA = "gbmpo-bench/1"
SECTIONS = ("step", "sampling", "rewards", "es")
OPTIONAL = {"es"}  # written by another engineer; absent -> "missing", not an error
ROOT = pathlib.Path(__file__).resolve().parents[1]
LOG = ROOT / "BENCHMARKS.md"


def parse_sections(text: str | None) -> list[str]:
    if not text:
        return list(SECTIONS)
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in SECTIONS]
    if bad or not names:
        raise ValueError(
            f"--sections {text!r}: unknown {bad}; use a comma list of {', '.join(SECTIONS)}"
        )
    return names


def run_section(name: str, quick: bool) -> dict:
    t0 = time.perf_counter()
    try:
        mod = importlib.import_module(f"bench.{name}_bench")
    except ModuleNotFoundError as e:
        if name in OPTIONAL and e.name == f"bench.{name}_bench":
            return {"status": "missing", "wall_s": 0.0, "error": f"bench/{name}_bench.py absent"}
        if name in SECTIONS and e.name == f"bench.{name}_bench":
            raise  # a required section module is gone: the harness itself is broken
        mod = None
        failure = e
    except Exception as e:  # noqa: BLE001 - a section that does not import is that section's error
        mod, failure = None, e
    try:
        if mod is None:
            raise failure
        result = mod.run(quick)
    except Exception as e:  # noqa: BLE001 - a failed section is reported, the others still run
        traceback.print_exc(file=sys.stderr)
        return {"status": "error", "wall_s": round(time.perf_counter() - t0, 2),
                "error": f"{type(e).__name__}: {e}"[:2000]}  # fmt: skip
    return {"status": "ok", "wall_s": round(time.perf_counter() - t0, 2), "result": result}


def summarize(sections: dict) -> dict:
    """The headline numbers, pulled out of the section results (absent sections are skipped)."""
    out: dict = {}
    step = sections.get("step", {}).get("result")
    if step:
        for c in step["cases"]:
            o = c["ours"]
            s = {
                "ours_step_s": o["step"]["steady_s"]["median"],
                "ours_step_spread": o["step"]["steady_s"]["spread"],
                "compile_s": round(sum(p["compile_s"] for p in o["phases"].values()), 2),
                "breakdown_s": o["step_breakdown_median_s"],
                "rollout_tokens_per_s": o["phases"]["rollout"]["tokens_per_s"],
                "logprob_tokens_per_s": o["phases"]["logprobs"]["tokens_per_s"],
                "update_tokens_per_s": o["phases"]["update"]["tokens_per_s"],
                "fraction_of_peak": {k: p["fraction_of_matmul_peak"]
                                     for k, p in o["phases"].items()},
                "ours_peak_rss_mb": o["peak_rss_mb"],
                "ours_warm_cache": o.get("warm_cache"),
            }  # fmt: skip
            if "trl" in c:
                s["trl_step_s"] = c["trl"]["steady_step_s"]["median"]
                s["trl_step_spread"] = c["trl"]["steady_step_s"]["spread"]
                s["trl_peak_rss_mb"] = c["trl"]["peak_rss_mb"]
                s["speedup_vs_trl"] = c["speedup_vs_trl"]
                s["meets_target"] = c.get("meets_target")
            out[f"step_{c['shape']}"] = s
        out["matmul_peak_gflop_per_s"] = step["matmul_peak_gflop_per_s"]
    samp = sections.get("sampling", {}).get("result")
    if samp:
        out["rollout_vs_transformers"] = {
            c["case"]: {"tokens_per_s": c["tokens_per_s"], "hf_tokens_per_s": c["hf_tokens_per_s"],
                        "speedup": c["speedup_vs_hf"]}
            for c in samp["cases"]
        }  # fmt: skip
    rew = sections.get("rewards", {}).get("result")
    if rew:
        out["reward_programs_per_s"] = rew["code_pool"]["programs_per_s"]
        out["reward_all_passed"] = rew["code_pool"]["all_passed"]
    es = sections.get("es", {})
    out["es_status"] = es.get("status", "not run")
    if es.get("result"):
        speedup = es["result"].get("speedup_best")
        out["es_vmap_speedup_vs_sequential"] = None if speedup is None else round(speedup, 2)
    return out


def _cell(s: dict, shape: str) -> str:
    c = s.get(f"step_{shape}")
    if not c:
        return "-"
    txt = f"{c['ours_step_s']:.3g} s"
    if "trl_step_s" in c:
        txt += f" vs {c['trl_step_s']:.3g} s = **{c['speedup_vs_trl']}x**"
    return txt


def _rss_cell(s: dict) -> str:
    """ours / TRL peak RSS of every step case that ran TRL (cold compilation cache; warm
    after the slash when the case has it)."""
    cells = []
    for k, c in s.items():
        if not (k.startswith("step_") and "trl_peak_rss_mb" in c):
            continue
        cell = f"{k[5:]} {c['ours_peak_rss_mb'] / c['trl_peak_rss_mb']:.2f}"
        if c.get("ours_warm_cache"):
            cell += f" / {c['ours_warm_cache']['peak_rss_mb'] / c['trl_peak_rss_mb']:.2f}"
        cells.append(cell)
    return ", ".join(cells) or "-"


def log_row(doc: dict) -> str:
    """One markdown table row for BENCHMARKS.md (columns as in its Log header)."""
    m, s = doc["machine"], doc["summary"]
    upd = s.get("step_23.6M", s.get("step_3M", {})).get("fraction_of_peak", {}).get("update")
    roll = s.get("rollout_vs_transformers", {})
    roll_txt = ", ".join(f"{k.split('_')[0]}: {v['speedup']}x" for k, v in roll.items()) or "-"
    status = {k: v["status"] for k, v in doc["sections"].items() if v["status"] != "ok"}
    cells = [
        m["date_utc"],
        f"{m['host']} {m['cpu_count']} cores, load {m['load_avg_1_5_15'][0]}, "
        f"{m.get('allocator', 'libc')}",
        m["commit"],
        f"jax {m['jax']} / torch {m['torch']} / trl {m['trl']}",
        f"{s.get('matmul_peak_gflop_per_s', '-')}",
        _cell(s, "3M"),
        _cell(s, "23.6M"),
        _cell(s, "3M-v49k"),
        _cell(s, "23.6M-v49k"),
        _cell(s, "smollm2"),
        _rss_cell(s),
        "-" if upd is None else f"{upd:.0%}",
        roll_txt,
        f"{s.get('reward_programs_per_s', '-')}",
        f"{s.get('es_vmap_speedup_vs_sequential') or '-'}",
        f"{doc['peak_rss_mb']['self']:.0f} / {doc['peak_rss_mb']['children']:.0f}",
        ", ".join(f"{k}: {v}" for k, v in status.items()) or "ok",
    ]
    return "| " + " | ".join(str(c) for c in cells) + " |"


def record(doc: dict, path: pathlib.Path = LOG) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: it holds the Log table rows are appended to")
    text = path.read_text()
    path.write_text(text + ("" if text.endswith("\n") else "\n") + log_row(doc) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny shapes, no TRL: checks the harness")
    ap.add_argument("--sections", default=None, help=f"comma list of {', '.join(SECTIONS)}")
    ap.add_argument("--out", default=None, help="also write the JSON document to this file")
    ap.add_argument("--no-record", action="store_true", help="do not append to BENCHMARKS.md")
    a = ap.parse_args(argv)
    try:
        names = parse_sections(a.sections)
    except ValueError as e:
        ap.error(str(e))
    machine = common.machine()
    sections = {}
    for name in names:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        sections[name] = run_section(name, a.quick)
        print(f"[bench] {name}: {sections[name]['status']} in {sections[name]['wall_s']} s",
              file=sys.stderr, flush=True)  # fmt: skip
        if a.out:  # partial results survive a later section that hangs or is killed
            pathlib.Path(a.out).write_text(json.dumps({"partial": True, "sections": sections}))
    machine["load_avg_1_5_15_end"] = common.machine()["load_avg_1_5_15"]
    doc = {
        "schema": SCHEMA,
        "quick": a.quick,
        "machine": machine,
        "sections": sections,
        "summary": summarize(sections),
        "peak_rss_mb": {"self": common.peak_rss_mb(), "children": common.peak_rss_mb(True)},
    }
    text = json.dumps(doc, indent=2)
    print(text)
    if a.out:
        pathlib.Path(a.out).write_text(text + "\n")
    if not (a.quick or a.no_record):
        record(doc)
        print(f"[bench] appended a row to {LOG}", file=sys.stderr)
    return 1 if any(s["status"] == "error" for s in sections.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
