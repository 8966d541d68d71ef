"""One ES inner step for a population of P=8 mirror maps: `vmap` mode (one program for all
members, `meta.member_chunk` of them vmapped per loop iteration inside it; default the
automatic choice, `population.auto_chunk`) against 8 sequential members (the same program
with a member axis of 1, called once per member).

Model: the ES demo's (arith_es_meta = the main CPU demo's task and "demo" model: Qwen2-shaped,
hidden 128, 4 layers, char tokenizer, 16 prompts x G=8, its max_new_tokens) without its
warm-up; quick: the tiny shape (hidden 32, 2 layers), 2 prompts x G=4, 8 new tokens. One
inner step = the step program of `rl/program.py` for all members: rollout, log-prob pass,
host decode and rewards, advantages + update (`population.make_programs(...).inner_step`). Compile is excluded
(each program is called once first); reported: best and median of interleaved repeats, the
speed-up sequential / vmap, and compile + first-call seconds. On a shared CPU compare the
ratio, not the absolute seconds.

Usage: ``python -m bench.es_bench [--quick] [--chunks 1,2,4,8]`` prints JSON (``--chunks``
also times those chunk sizes); a harness calls `run(quick)`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402

from gbmpo_jax import config as C  # noqa: E402
from gbmpo_jax import meta, policy
from gbmpo_jax.es import population
from gbmpo_jax.es import strategies as es
from gbmpo_jax.tasks import episodes  # noqa: E402

P = 8


def _setup(quick: bool):
    cfg, _ = meta.load("arith_es_meta")
    ov = {"warmup.steps": 0, "objective.mask_truncated_completions": False}
    if quick:
        ov.update({"model.random_shape": "tiny", "rollout.prompts_per_step": 2,
                   "rollout.group_size": 4, "rollout.max_new_tokens": 8})  # fmt: skip
    cfg = C.validate(C.override(cfg, **ov))
    model, tok = policy.load_model_and_tokenizer(cfg)
    obj = policy.build_objective(cfg, model.config, tok)
    td = episodes.TrainData.from_config(cfg, tok)
    ad = es.mirror_adapter()
    z0 = ad.from_params(jax.device_get(obj.div_params))
    params = ad.to_params(z0 + 0.3 * jax.random.normal(jax.random.key(0), (P, es.DIM)))

    def programs(chunk):
        return population.make_programs(cfg, model, tok, obj, td, member_chunk=chunk)

    return cfg, programs, params


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(quick: bool, chunks: tuple[int, ...] = ()) -> dict:
    cfg, programs, params = _setup(quick)
    rows = cfg.rollout.prompts_per_step * cfg.rollout.group_size
    auto = population.auto_chunk(rows, P)
    chunks = tuple(dict.fromkeys((auto, *chunks)))
    seq = programs(None)  # a member axis of 1: the chunk does not matter
    singles = [seq.init_members(jax.tree.map(lambda x, i=i: x[i : i + 1], params))
               for i in range(P)]  # fmt: skip

    def seq_step():
        for i in range(P):
            singles[i], _ = seq.inner_step(singles[i], 1)

    steps, pops = {}, {}
    for c in chunks:
        progs = programs(c)
        pops[c] = progs.init_members(params)

        def step(c=c, progs=progs):
            pops[c], _ = progs.inner_step(pops[c], 1)

        steps[c] = step
    first = {f"chunk_{c}": _timed(steps[c]) for c in chunks}
    first["sequential"] = _timed(seq_step)
    times = {c: [] for c in chunks}
    ts = []
    for _ in range(20 if quick else 5):  # interleaved: load drift hits every variant alike
        for c in chunks:
            times[c].append(_timed(steps[c]))
        ts.append(_timed(seq_step))
    tv = times[auto]
    return {
        "population": P,
        "model": cfg.model.random_shape,
        "rows_per_member": rows,
        "max_new_tokens": cfg.rollout.max_new_tokens,
        "cpu_count": os.cpu_count(),
        "devices": str(jax.devices()[0].platform),
        "member_chunk": auto,
        "vmap_step_s_best": min(tv),
        "vmap_step_s_median": statistics.median(tv),
        "sequential_step_s_best": min(ts),
        "sequential_step_s_median": statistics.median(ts),
        "speedup_best": min(ts) / min(tv),
        "speedup_median": statistics.median(ts) / statistics.median(tv),
        "by_chunk": {
            c: {
                "best_s": min(t),
                "median_s": statistics.median(t),
                "speedup_median": statistics.median(ts) / statistics.median(t),
            }
            for c, t in times.items()
        },  # fmt: skip
        "first_call_s": first,
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--chunks", default="", help="also time these member chunks: 1,2,4,8")
    a = ap.parse_args(argv)
    chunks = tuple(int(c) for c in a.chunks.split(",") if c)
    print(json.dumps(run(a.quick, chunks), indent=2))


if __name__ == "__main__":
    main()
