"""One full GRPO step: ours (JAX, the pieces of `train.py`'s loop) vs TRL `GRPOTrainer` (torch CPU).

Same work on both sides, same weights, same prompt tokens. The parent process writes one HF
directory per case (weights, tokenizer, ``prompts.json``); our worker loads it with
`models.load_pretrained`, TRL's with transformers. Cases (`CASES`):

  tiny / 3M / 23.6M      random-init Qwen2-shaped presets (`presets.model_config`), vocab 64,
                         random prompts of 24 tokens, a WordLevel tokenizer over the ids
  3M-v49k / 23.6M-v49k   the same bodies with SmolLM2's vocabulary size (49,152): the lm_head
                         and the log-softmax over [rows, tokens, vocab] dominate, as in real models
  smollm2                SmolLM2-135M-Instruct from the GGUF the install ships (dequantised to
                         float32), its own tokenizer, 4 GSM8K questions as chat prompts
                         (TRL gets the messages and applies the same chat template)

A step is 4 prompts x G=8 samples at T=1 with exactly ``new_tokens`` completion tokens (min =
max new tokens), then the reference log-probs (beta = 0.04), then one dr_grpo update (AdamW,
lr 1e-6, clip 1.0). The reward (both sides, on the decoded text): how often one word appears.

  ours  sampling.generate -> make_compute_logprobs(policy=False) (the reference pass only: with
        mu = 1 the update takes "old" from its own forward, as train.py does and as TRL does
        with num_iterations = 1) -> advantages -> make_update. Each phase is timed after
        block_until_ready. The CPU settings: layers unrolled (model.scan_layers=false) and,
        under `make bench`, tcmalloc preloaded for both sides (the workers inherit
        LD_PRELOAD; `machine.allocator` records it), and each large compile's freed memory
        handed back (`host.release_around_compiles`, as `train.setup` does). Log-probs in the
        default `objective.logprob_chunk` (auto: chunks of <= 256 MiB of fp32 logits; the
        vocab-64 cases fit one).
  TRL   GRPOTrainer.train(max_steps = N), step times from a TrainerCallback (on_step_end to
        on_step_end); generation_kwargs min_new_tokens = max, fp32, gradient checkpointing
        off (TRL defaults to on: an extra forward we do not do).
  both  the update in ``--micro-batches`` m (default 1; TRL: 32 / m rows per device x m
        gradient-accumulation steps, one generation batch of 32). Our worker hides torch from
        transformers: our runtime install has none.

Each side runs in its own subprocess so that its peak RSS is its own. Ours runs twice: cold
(an empty persistent compilation cache, `scale.compile_cache`: the numbers of the tables) and
then warm (2 steps reading the executables the cold run cached: first step and peak RSS, as
a rerun or a resumed run sees them). Step 1 (compile / warm-up) is reported apart; steady state = steps 2..N as median, min, max, spread. Per phase:
tokens/s and model FLOP/s as a fraction of the fp32 matmul peak measured in this run
(`bench.common` gives the FLOP model; for smollm2 the prompt length is the padded one).

Usage: ``python -m bench.step_bench [--quick] [--shapes 3M,23.6M,smollm2] [--steps N]
[--micro-batches M]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from bench import common  # noqa: E402

PROMPTS, GROUP, PROMPT_LEN = 4, 8, 24
# update micro-batches, the same on both sides (`--micro-batches`; TRL: 32 / m rows per device
# x m gradient-accumulation steps, one generation batch of 32). Default 1: the whole batch at
# once, the setting the issue-16 targets were set against; 4 (one group per micro-batch) is
# how the SmolLM2 experiments run (BENCHMARKS.md has both)
MICRO_BATCHES = 1
BETA, LR = 0.04, 1e-6
EOS, PAD, FIRST_SYMBOL = 1, 0, 2  # the synthetic cases' special ids
SMOLLM2_VOCAB = 49_152


@dataclasses.dataclass(frozen=True)
class Case:
    model: str  # a `presets` shape, or "smollm2" (the shipped GGUF)
    vocab: int  # synthetic vocabulary size (0: the model's own)
    new_tokens: int
    reward_word: str  # reward = how often this word appears in the decoded completion
    target: float | None = None  # required speed-up vs TRL (issue 16), None: no target


CASES = {
    "tiny": Case("tiny", 64, 8, "s7"),
    "3M": Case("3M", 64, 32, "s7", 1.5),
    "23.6M": Case("23.6M", 64, 128, "s7", 2.0),
    "3M-v49k": Case("3M", SMOLLM2_VOCAB, 32, "s7", 1.5),
    "23.6M-v49k": Case("23.6M", SMOLLM2_VOCAB, 128, "s7", 2.0),
    "smollm2": Case("smollm2", 0, 64, "the", 2.0),
}
FULL = ("3M", "23.6M", "3M-v49k", "23.6M-v49k", "smollm2")
# TRL step times measured on this machine before (issue 16): context, not a target
TRL_PREVIOUS_S = {"3M": 0.67, "23.6M": 15.8}


def _word_tokenizer(vocab: int):
    """A WordLevel tokenizer over ids 0..vocab-1 ("<pad>", "<eos>", "s2", "s3", ...)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": PAD, "<eos>": EOS}
    words.update({f"s{i}": i for i in range(FIRST_SYMBOL, vocab)})
    tok = Tokenizer(models.WordLevel(words, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", padding_side="left"
    )


def prepare(name: str, path: str, seed: int = 0):
    """Writes case `name` into directory `path`: HF weights + tokenizer + ``prompts.json``
    ({"prompts": what TRL is given, "ids": the token ids both sides must start from}).
    Returns the model config."""
    import jax
    import numpy as np

    from gbmpo_jax import models
    from gbmpo_jax.models import presets

    case = CASES[name]
    if case.model == "smollm2":
        from gbmpo_jax.models.tokenizer import load_tokenizer
        from gbmpo_jax.tasks import data

        gguf = models.smollm2_gguf_path()
        model, tok = models.load_pretrained(gguf), load_tokenizer(gguf)
        prompts = [ex.prompt for ex in data.load_split("gsm8k", "test", source="bundled")[:PROMPTS]]
        ids = _prompt_ids(tok, prompts)
    else:
        cfg = presets.model_config(case.model, case.vocab, eos_token_id=(EOS,), pad_token_id=PAD)
        model, tok = models.init_model(cfg, jax.random.key(seed)), _word_tokenizer(case.vocab)
        rng = np.random.default_rng(seed)
        ids = rng.integers(FIRST_SYMBOL, case.vocab, size=(PROMPTS, PROMPT_LEN)).tolist()
        prompts = [" ".join(f"s{i}" for i in row) for row in ids]
    # the synthetic WordLevel tokenizer is rebuilt in code by the workers (`_load_case`)
    models.save_pretrained(model, path, tokenizer=None if case.vocab else tok)
    (pathlib.Path(path) / "prompts.json").write_text(json.dumps({"prompts": prompts, "ids": ids}))
    return model.config


def _prompt_ids(tok, prompts) -> list[list[int]]:
    """The token ids TRL makes of `prompts`: chat messages through the chat template with the
    generation prompt, plain text through the tokenizer."""
    if isinstance(prompts[0], list):
        return [list(tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True,
                                             return_dict=True)["input_ids"]) for p in prompts]  # fmt: skip
    return [list(r) for r in tok(prompts)["input_ids"]]


def _load_case(name: str, model_dir: str):
    from transformers import AutoTokenizer

    vocab = CASES[name].vocab
    spec = json.loads((pathlib.Path(model_dir) / "prompts.json").read_text())
    tok = _word_tokenizer(vocab) if vocab else AutoTokenizer.from_pretrained(model_dir)
    return spec["prompts"], spec["ids"], tok


def reward_fn(word: str):
    def reward(texts):
        return [float(t.split().count(word)) for t in texts]

    return reward


# --------------------------------------------------------------------------- our side
def ours_worker(name: str, model_dir: str, steps: int, seed: int, micro: int) -> dict:
    # our runtime install has no torch (requirements.txt); this environment has it for TRL, and
    # transformers imports it whenever it is installed (~170 MB RSS for its config classes):
    # hide it, so that our peak RSS is that of a user's install
    sys.modules.setdefault("torch", None)
    import jax
    import jax.numpy as jnp
    import numpy as np

    from gbmpo_jax import models, policy
    from gbmpo_jax.rl import advantages, divergences
    from gbmpo_jax.rl.optim import OptimConfig, make_optimizer
    from gbmpo_jax.rl.train_step import init_state, make_compute_logprobs, make_update, step_config
    from gbmpo_jax.sampler import sampling
    from gbmpo_jax.scale import compile_cache, host

    host.release_around_compiles()  # as `train.setup` does, with run.compile_cache=auto:
    compile_cache.enable("auto")  # the directory the parent passes in GBMPO_COMPILE_CACHE
    case = CASES[name]
    new_tokens = case.new_tokens
    _, prompt_ids, tok = _load_case(name, model_dir)
    reward = reward_fn(case.reward_word)
    model = models.load_pretrained(model_dir)
    # the CPU setting: layers unrolled (model.scan_layers=false), 1.1-1.4x faster updates
    mc = dataclasses.replace(model.config, scan_layers=False)
    model = models.Model(mc, model.params)
    step_cfg = step_config(loss_type="dr_grpo", max_completion_length=new_tokens,
                           mask_truncated_completions=False, group_size=GROUP, temperature=1.0,
                           micro_batches=micro)  # fmt: skip
    # the batches are a rollout's (row b*G + g holds prompt b), as in the step program
    step_cfg = dataclasses.replace(step_cfg, shared_prompts=True)
    div = divergences.get("kl")
    opt = make_optimizer(OptimConfig(lr=LR, schedule="constant", warmup_ratio=0.0, clip_norm=1.0),
                         total_steps=max(steps, 1))  # fmt: skip
    base = jax.random.key(seed)
    state = init_state(model.params, opt, div.init_params(base), BETA, step_cfg, divergence=div)
    apply_fn = policy.make_apply_fn(mc)
    compute_logprobs = make_compute_logprobs(apply_fn, step_cfg, policy=False)
    update = make_update(apply_fn, div, opt, step_cfg)
    adv_fn = jax.jit(advantages.get("dr_grpo"), static_argnums=1)
    pad = mc.pad_token_id if mc.pad_token_id is not None else mc.eos_token_id[0]
    scfg = sampling.SamplingConfig(
        new_tokens, group_size=GROUP, min_new_tokens=new_tokens,
        stop_token_ids=tuple(mc.eos_token_id), pad_token_id=pad,
    )  # fmt: skip
    ids, mask = sampling.pad_prompts(prompt_ids, pad)

    phases = {"rollout": [], "logprobs": [], "update": [], "step": []}
    t_start = time.perf_counter()
    for step in range(steps):
        key = jax.random.fold_in(base, step)
        t0 = time.perf_counter()
        out = jax.device_get(
            sampling.generate(models.Model(mc, state.params), ids, mask, key, scfg)
        )
        t1 = time.perf_counter()
        if int(out.lengths.min()) != new_tokens:
            raise RuntimeError("rollout stopped early: the token count differs from TRL's")
        input_ids = np.concatenate([out.prompt_ids, out.tokens], axis=1)
        attn = np.concatenate([out.prompt_mask, out.mask], axis=1)
        _, ref_lp, _ = jax.block_until_ready(compute_logprobs(state, input_ids, attn, new_tokens))
        t2 = time.perf_counter()
        # the host part of a step, as TRL does it: decode, score
        rewards = np.asarray(reward(tok.batch_decode(out.tokens, skip_special_tokens=True)),
                             np.float32)  # fmt: skip
        adv, _ = adv_fn(jnp.asarray(rewards), GROUP)
        batch = {
            "input_ids": input_ids, "attention_mask": attn, "completion_mask": out.mask,
            "ref_logp": ref_lp, "advantages": adv,
        }  # fmt: skip
        state, metrics = update(state, batch, jax.random.fold_in(key, 1))
        metrics = jax.device_get(metrics)
        t3 = time.perf_counter()
        if not np.isfinite(metrics["train/loss"]):
            raise RuntimeError(f"non-finite loss at step {step}: the benchmark step is broken")
        for ph, dt in (("rollout", t1 - t0), ("logprobs", t2 - t1), ("update", t3 - t2),
                       ("step", t3 - t0)):  # fmt: skip
            phases[ph].append(dt)
    return {
        "phases_s": phases,
        "total_s": time.perf_counter() - t_start,
        "prompt_len": int(ids.shape[1]),
        "peak_rss_mb": common.peak_rss_mb(),
    }


# --------------------------------------------------------------------------- TRL side
def trl_worker(name: str, model_dir: str, steps: int, seed: int, micro: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    case = CASES[name]
    torch.manual_seed(seed)
    prompts, want_ids, tok = _load_case(name, model_dir)
    tok.padding_side = "left"
    if _prompt_ids(tok, prompts) != want_ids:
        raise RuntimeError("TRL's prompt tokens differ from ours: the comparison would be unfair")
    data = Dataset.from_dict({"prompt": prompts})
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    score = reward_fn(case.reward_word)

    def reward(completions, **_):
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        return score(texts)

    times: list[float] = []

    class StepTimes(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            times.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out_dir:
        args = GRPOConfig(
            output_dir=out_dir, use_cpu=True, bf16=False, report_to="none",
            save_strategy="no", logging_steps=10_000, disable_tqdm=True, seed=seed,
            per_device_train_batch_size=PROMPTS * GROUP // micro, num_generations=GROUP,
            gradient_accumulation_steps=micro, max_steps=steps, learning_rate=LR,
            max_completion_length=case.new_tokens, beta=BETA, loss_type="dr_grpo",
            scale_rewards="none", temperature=1.0, top_p=1.0, top_k=0,
            mask_truncated_completions=False, max_grad_norm=1.0,
            gradient_checkpointing=False,  # TRL's default True recomputes the forward
            generation_kwargs={"min_new_tokens": case.new_tokens},
        )  # fmt: skip
        trainer = GRPOTrainer(
            model=model, reward_funcs=reward, args=args, train_dataset=data,
            processing_class=tok, callbacks=[StepTimes()],
        )  # fmt: skip
        t0 = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - t0
    steps_s = [b - a for a, b in zip(times, times[1:], strict=False)]
    if len(steps_s) != steps:
        raise RuntimeError(f"TRL ran {len(steps_s)} steps, expected {steps}")
    return {
        "phases_s": {"step": steps_s},
        "total_s": total,
        "torch_threads": torch.get_num_threads(),
        "peak_rss_mb": common.peak_rss_mb(),
    }


WORKERS = {"ours": ours_worker, "trl": trl_worker}


def _spawn(side: str, name: str, model_dir: str, steps: int, seed: int, micro: int,
           cache: str = "off") -> dict:  # fmt: skip
    cmd = [sys.executable, "-m", "bench.step_bench", "--worker", side, "--shapes", name,
           "--model-dir", model_dir, "--steps", str(steps), "--seed", str(seed),
           "--micro-batches", str(micro)]  # fmt: skip
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "GBMPO_COMPILE_CACHE": cache}
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{side} worker failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- report
def _phase_report(samples: list[float], flops: float, tokens: int, peak: float) -> dict:
    first, steady = samples[0], samples[1:] or samples[:1]
    st = common.stats(steady)
    return {
        "first_s": round(first, 4),
        "compile_s": round(max(first - st["median"], 0.0), 4),
        "steady_s": st,
        "tokens_per_s": round(tokens / st["median"], 1),
        "gflop_per_s": round(flops / st["median"] / 1e9, 2),
        "fraction_of_matmul_peak": round(flops / st["median"] / peak, 3),
    }


def bench_case(
    name: str, steps: int, peak: float, seed: int = 0, with_trl: bool = True,
    micro: int = MICRO_BATCHES,
) -> dict:  # fmt: skip
    case = CASES[name]
    new_tokens = case.new_tokens
    with tempfile.TemporaryDirectory() as model_dir, tempfile.TemporaryDirectory() as cache:
        cfg = prepare(name, model_dir, seed)
        load = {"before": list(os.getloadavg())}
        # cold: an empty compilation cache (a machine's first run); warm: a second process
        # with the programs the first one cached (a rerun, a resumed run, an evaluation)
        ours = _spawn("ours", name, model_dir, steps, seed, micro, cache)
        warm = _spawn("ours", name, model_dir, 2, seed, micro, cache)
        trl = _spawn("trl", name, model_dir, steps, seed, micro) if with_trl else None
        load["after"] = list(os.getloadavg())
    rows, prompt_len = PROMPTS * GROUP, ours["prompt_len"]
    seq = prompt_len + new_tokens
    fwd = common.logprob_forward_flops(cfg, PROMPTS, GROUP, prompt_len, new_tokens)
    flops = {
        "rollout": common.rollout_flops(cfg, prompt_len, PROMPTS, GROUP, new_tokens),
        "logprobs": fwd,  # the reference pass (mu = 1: no separate "old" pass)
        "update": 3 * fwd,  # forward + backward
    }
    tokens = {"rollout": rows * new_tokens, "logprobs": rows * seq, "update": rows * seq}
    ph = ours["phases_s"]
    report = {
        "shape": name,
        "model": case.model,
        "vocab": cfg.vocab_size,
        "params_m": round((common.matmul_params(cfg) + cfg.vocab_size * cfg.hidden_size) / 1e6, 2),
        "rows": rows,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "steps": steps,
        "micro_batches": micro,
        "load_avg_1m": [round(load["before"][0], 2), round(load["after"][0], 2)],
        "ours": {
            "phases": {k: _phase_report(ph[k], flops[k], tokens[k], peak) for k in flops},
            "step": _phase_report(ph["step"], sum(flops.values()), rows * new_tokens, peak),
            "peak_rss_mb": ours["peak_rss_mb"],
            "warm_cache": {
                "first_step_s": round(warm["phases_s"]["step"][0], 4),
                "step_s": round(warm["phases_s"]["step"][1], 4),
                "peak_rss_mb": warm["peak_rss_mb"],
            },
        },
    }
    report["ours"]["step_breakdown_median_s"] = {
        k: report["ours"]["phases"][k]["steady_s"]["median"] for k in flops
    }
    if trl is not None:
        st = trl["phases_s"]["step"]
        tst = common.stats(st[1:] or st)
        report["trl"] = {
            "first_step_s": round(st[0], 4),
            "steady_step_s": tst,
            "fraction_of_matmul_peak": round(sum(flops.values()) / tst["median"] / peak, 3),
            "torch_threads": trl["torch_threads"],
            "peak_rss_mb": trl["peak_rss_mb"],
        }
        ours_med = report["ours"]["step"]["steady_s"]["median"]
        report["speedup_vs_trl"] = round(tst["median"] / ours_med, 2)
        report["rss_vs_trl"] = round(ours["peak_rss_mb"] / trl["peak_rss_mb"], 2)
        report["warm_rss_vs_trl"] = round(warm["peak_rss_mb"] / trl["peak_rss_mb"], 2)
        if case.target is not None:
            report["target_speedup"] = case.target
            report["meets_target"] = report["speedup_vs_trl"] >= case.target
        if name in TRL_PREVIOUS_S:
            report["trl_step_s_measured_before"] = TRL_PREVIOUS_S[name]
    return report


def run(
    quick: bool, shapes: list[str] | None = None, steps: int | None = None,
    micro: int = MICRO_BATCHES,
) -> dict:  # fmt: skip
    """Benchmark numbers as a JSON-able dict (see the module docstring). Quick: case "tiny",
    3 steps, no TRL (checks the harness, not the speed)."""
    shapes = shapes or (["tiny"] if quick else list(FULL))
    bad = [s for s in shapes if s not in CASES]
    if bad:
        raise ValueError(f"step_bench shapes {bad} unknown; choose from {sorted(CASES)}")
    steps = steps or (3 if quick else 4)
    if steps < 2:
        raise ValueError(f"steps={steps}: need >= 2 (step 1 is compile / warm-up)")
    peak = common.matmul_peak(reps=3 if quick else 5)
    out = {"matmul_peak_gflop_per_s": round(peak / 1e9, 1), "cases": []}
    for name in shapes:
        # the big cases take 10-60 s a TRL step: 3 steps (1 warm-up + 2 timed) unless asked
        n = steps if quick or CASES[name].new_tokens <= 32 else max(3, steps - 1)
        out["cases"].append(bench_case(name, n, peak, with_trl=not quick, micro=micro))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny case, 3 steps, no TRL")
    ap.add_argument("--shapes", default=None, help="comma list of: " + ",".join(CASES))
    ap.add_argument("--steps", type=int, default=None, help="steps per side (first is warm-up)")
    ap.add_argument("--micro-batches", type=int, default=MICRO_BATCHES,
                    help="update micro-batches, both sides (divides the 32 rows)")  # fmt: skip
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.micro_batches < 1 or (PROMPTS * GROUP) % a.micro_batches:
        ap.error(f"--micro-batches={a.micro_batches}: must divide the {PROMPTS * GROUP} rows")
    if a.worker:
        res = WORKERS[a.worker](a.shapes, a.model_dir, a.steps, a.seed, a.micro_batches)
        print(json.dumps(res))
        return
    shapes = a.shapes.split(",") if a.shapes else None
    print(json.dumps(run(a.quick, shapes, a.steps, a.micro_batches), indent=2))


if __name__ == "__main__":
    main()
