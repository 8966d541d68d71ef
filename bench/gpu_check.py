"""First accelerator check (issue 15): correctness first, then timing; one JSON file.

1. correctness: the six paper rehearsals (`<experiment>:rehearsal` through `train.run`: bf16
   with float32 master weights, remat, LoRA / full fine-tuning, micro-batches, the real Qwen3
   tokenizer with thinking off, the sampler settings, bundled data, the sandbox and the final
   test evaluation, on a tiny random Qwen3-shaped model). Each must finish with finite
   metrics and a `final/test_*` record.
2. timing: a short bf16 run of a real-sized Qwen3 shape (random weights, the real tokenizer)
   with an experiment's real settings (default `mbpp_drgrpo`: Qwen3-1.7B full fine-tuning,
   4 prompts x G=32, 256 new tokens, 8 micro-batches, remat) and the same library pieces
   `train.run` uses (rollout -> reference log-probs -> jitted update). A random model solves
   nothing and never stops, so this run draws seeded 0/1 rewards and keeps truncated
   completions in the loss: otherwise every advantage and token weight is zero and "weights
   changed" would test nothing. Reported per step: rollout / update seconds, tokens/s, update
   MFU against the bf16 matmul peak measured here, and at the end peak device memory, loss
   finite, and the fraction of trainable entries that changed.

``--tiny`` runs the same code with the `qwen3-tiny` shape and small batches (a CPU check of
the script). Usage: ``bash bench/gpu_check.sh`` on a GPU machine; JSON under $OUT.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

from bench import common
from gbmpo_jax import config as C
from gbmpo_jax import experiment, policy, train
from gbmpo_jax.rl import placement, program
from gbmpo_jax.scale import mesh as mesh_lib
from gbmpo_jax.tasks import episodes
from gbmpo_jax.workdir import metrics

PAPER = [f"{t}_{d}" for t in ("gsm8k", "mbpp") for d in ("drgrpo", "probl2", "neural_mirror")]


def rehearsal(name: str, workdir: pathlib.Path) -> dict:
    cfg = C.override(experiment.load(name + ":rehearsal"), **{"mesh.num_devices": 1})
    t0 = time.perf_counter()
    summary = train.run(cfg, workdir / name, log=lambda *a: None)
    recs = [r for r in metrics.read_jsonl(workdir / name / "metrics.jsonl") if "train/loss" in r]
    finite = all(math.isfinite(v) for r in recs for v in r.values() if isinstance(v, float))
    final = summary.get("final_eval", {})
    ok = summary["step"] == cfg.run.steps and finite and "final/test_accuracy" in final
    return {"ok": bool(ok), "wall_s": round(time.perf_counter() - t0, 1), "finite": finite,
            "steps": summary["step"], **{k: v for k, v in final.items()}}  # fmt: skip


def _peak_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def real_shape_run(exp: str, shape: str, steps: int, tiny: bool, peak_flops: float) -> dict:
    """`steps` training steps of `exp` at `shape` (see the module docstring, part 2)."""
    real = experiment.load(exp)
    reh = experiment.load(exp + ":rehearsal")  # the real tokenizer path and bundled data
    ov = {
        "model.path": "random", "model.random_shape": shape,
        "model.tokenizer": reh.model.tokenizer, "task.name": reh.task.name,
        "task.source": reh.task.source, "objective.mask_truncated_completions": False,
        "run.steps": steps, "mesh.num_devices": 1,
    }  # fmt: skip
    if tiny:
        ov.update({"rollout.group_size": 2, "rollout.max_new_tokens": 16,
                   "rollout.min_new_tokens": 8})  # fmt: skip
    cfg = C.validate(C.override(real, **ov))
    t0 = time.perf_counter()
    model, tok = policy.load_model_and_tokenizer(cfg)
    obj = policy.build_objective(cfg, model.config, tok)
    td = episodes.TrainData.from_config(cfg, tok)
    mc = model.config
    mesh = mesh_lib.setup(cfg.mesh, jax.devices()[:1])
    state, state_sh = placement.shard_state(program.init_state(cfg, model.params, obj), mc, mesh,
                                           lora_cfg=obj.step_cfg.lora)  # fmt: skip
    del model
    before = jax.device_get(state.params)
    # the training loop's own step program (program.py), driven with synthetic rewards
    prog = program.make_program(mc, obj, dtype=cfg.model.dtype, mesh=mesh, state_sh=state_sh)
    rng = np.random.default_rng(0)
    g = cfg.rollout.group_size
    out = {"experiment": exp, "shape": shape, "params_m": round(
        sum(x.size for x in jax.tree.leaves(state.frozen)) / 1e6, 1), "vocab": mc.vocab_size,
        "rows": cfg.rollout.prompts_per_step * g, "micro_batches": cfg.objective.micro_batches,
        "setup_s": round(time.perf_counter() - t0, 1), "steps": []}  # fmt: skip
    losses = []
    prompts = td.batch(1, cfg.rollout.prompts_per_step)
    ids, mask = episodes.encode_prompts(tok, [e.prompt for e in prompts], cfg.task.max_prompt_len,
                                        obj.sampling.pad_token_id, td.chat_kwargs)  # fmt: skip
    for step in range(1, steps + 1):
        key = jax.random.fold_in(jax.random.key(cfg.run.seed), step)
        t0 = time.perf_counter()
        # the same prompts every step (new samples): one compiled shape, so steps 2.. are
        # steady-state timings (step 1 includes compilation)
        ro = prog.rollout(state, ids, mask, key, obj.sampling)
        batch = program.join(ro)
        jax.block_until_ready(batch)
        t1 = time.perf_counter()
        n_tok = int(jax.device_get(ro.lengths).sum())
        rewards = rng.integers(0, 2, batch["input_ids"].shape[0]).astype(np.float32)
        rewards[::g] = 1.0 - rewards[1::g]  # every group has both outcomes
        old, ref = prog.score(state, batch)
        batch = dict(batch, ref_logp=ref, rewards=jnp.asarray(rewards))
        if old is not None:
            batch["old_logp"] = old
        state, m = prog.learn(state, batch, key)
        m = jax.device_get(m)
        t2 = time.perf_counter()
        rows, seq = batch["input_ids"].shape
        # policy forward + backward (3x forward) and the reference forward
        flops = 4 * common.seq_forward_flops(mc, rows, seq)
        losses.append(float(m["train/loss"]))
        out["steps"].append({
            "step": step, "rollout_s": round(t1 - t0, 2), "update_s": round(t2 - t1, 2),
            "seq_len": int(seq), "rollout_tokens_per_s": round(n_tok / (t1 - t0), 1),
            "update_tokens_per_s": round(rows * seq / (t2 - t1), 1),
            "update_mfu": round(flops / (t2 - t1) / peak_flops, 3),
            "loss": losses[-1], "grad_norm": float(m["train/grad_norm"]),
            "skipped": int(m["train/skipped_steps"]),
        })  # fmt: skip
        print(json.dumps(out["steps"][-1]), flush=True)
    after = jax.device_get(state.params)
    changed = sum(int(np.sum(np.asarray(a) != np.asarray(b))) for a, b in
                  zip(jax.tree.leaves(after), jax.tree.leaves(before), strict=True))  # fmt: skip
    total = sum(np.asarray(b).size for b in jax.tree.leaves(before))
    steady = out["steps"][1:] or out["steps"]
    out["steady"] = {k: float(np.median([s[k] for s in steady])) for k in
                     ("rollout_s", "update_s", "rollout_tokens_per_s", "update_tokens_per_s",
                      "update_mfu")}  # fmt: skip
    out.update({
        "loss_finite": bool(np.all(np.isfinite(losses))),
        "weights_changed_frac": round(changed / total, 4),
        "trainable_dtypes": sorted({str(x.dtype) for x in jax.tree.leaves(after)}),
        "peak_device_bytes": _peak_bytes(),
    })  # fmt: skip
    out["ok"] = (
        out["loss_finite"]
        and out["weights_changed_frac"] >= 0.99
        and not any(s["skipped"] for s in out["steps"])
    )
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON file (rewritten after every part)")
    ap.add_argument("--workdir", default="runs/gpu_check", help="run directories")
    ap.add_argument("--rehearsals", default=",".join(PAPER), help="comma list; '' = none")
    ap.add_argument("--experiment", default="mbpp_drgrpo", help="settings of the timing run")
    ap.add_argument("--shape", default="1.7B", help="presets shape of the timing run")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="CPU check: qwen3-tiny, small batches")
    a = ap.parse_args(argv)
    if a.tiny:
        a.shape = "qwen3-tiny"
    elif jax.default_backend() == "cpu":
        print("gpu_check: no accelerator (use --tiny to check the script on CPU)", file=sys.stderr)
        return 2
    out = pathlib.Path(a.out)
    wd = pathlib.Path(a.workdir) / time.strftime("%Y%m%d-%H%M%S")  # fresh: never a resume
    doc = {"machine": common.machine(), "device_kind": jax.devices()[0].device_kind,
           "tiny": a.tiny, "rehearsals": {}, "timing": None}  # fmt: skip
    for name in [n for n in a.rehearsals.split(",") if n]:
        try:
            doc["rehearsals"][name] = rehearsal(name, wd)
        except Exception as e:  # noqa: BLE001 - one failure must not lose the rest
            doc["rehearsals"][name] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:800],
                                       "trace": traceback.format_exc()[-2000:]}  # fmt: skip
        print(name, json.dumps(doc["rehearsals"][name]), flush=True)
        out.write_text(json.dumps(doc, indent=2))
    n = 256 if a.tiny else 8192
    doc["bf16_matmul_peak_tflop_per_s"] = round(common.matmul_peak(n, 5, "bfloat16") / 1e12, 3)
    try:
        doc["timing"] = real_shape_run(a.experiment, a.shape, a.steps, a.tiny,
                                       doc["bf16_matmul_peak_tflop_per_s"] * 1e12)  # fmt: skip
    except Exception as e:  # noqa: BLE001
        doc["timing"] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:800],
                         "trace": traceback.format_exc()[-2000:]}  # fmt: skip
    out.write_text(json.dumps(doc, indent=2))
    print(json.dumps(doc, indent=2))
    ok = all(r.get("ok") for r in doc["rehearsals"].values()) and doc["timing"].get("ok")
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")
    sys.exit(main())
