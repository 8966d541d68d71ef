"""Host-side glue between text and the jitted core: prompts in, scored episodes out.

* `TrainData`: a task's training examples in a seeded order that is a pure function of
  (run.seed, step) — resuming needs no iterator state — plus a fixed held-out eval subset
  and the reward call (math check, or sandboxed code on a worker pool).
* `encode_prompts`: chat template -> token ids, left-truncated to `max_prompt_len`,
  left-padded to a bucketed length (few distinct shapes, few recompiles).
* `global_prompts`: the prompts as global arrays for a multi-host rollout.
* `evaluate`: greedy held-out accuracy through `tasks.evaluation.evaluate`.
* `sft_batch`: gold completions in the same layout, for the supervised warm-up.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from gbmpo_jax import seeds
from gbmpo_jax.sampler import sampling
from gbmpo_jax.tasks import data, prompts
from gbmpo_jax.tasks import evaluation as evaluate_lib


class TrainData:
    """Training examples in seeded epochs, the eval subset, and rewards for one run."""

    def __init__(self, task: data.Task, train, eval_examples, *, seed: int, reward_kwargs,
                 chat_kwargs=None):  # fmt: skip
        if not train:
            raise ValueError(f"task {task.name!r}: the training split is empty")
        self.task, self.train, self.eval_examples = task, list(train), list(eval_examples)
        self.seed, self.reward_kwargs = seed, dict(reward_kwargs)
        self.chat_kwargs = dict(chat_kwargs or {})  # chat-template variables of every prompt
        self._perms: dict[int, np.ndarray] = {}

    @classmethod
    def from_config(cls, cfg, tokenizer=None) -> TrainData:
        t = cfg.task
        task = data.get_task(t.name)
        options = dict(t.options)
        train = task.load(t.train_split, t.source, options)
        held = task.load(t.eval_split, t.source, options) if t.eval_split else []
        if held:
            rng = np.random.default_rng(cfg.run.seed + seeds.EVAL_SUBSET)
            idx = np.sort(rng.permutation(len(held))[: t.eval_size])
            held = [held[i] for i in idx]
            overlap = {e.id for e in held} & {e.id for e in train}
            if overlap:
                raise ValueError(
                    f"task.eval_split={t.eval_split!r} shares {len(overlap)} examples with "
                    f"task.train_split={t.train_split!r}: use disjoint splits (e.g. "
                    "inner_train / validation)"
                )
        kw = {}
        if task.kind == "code":
            kw = {"partial": t.reward == "partial", "timeout_s": t.code_timeout_s,
                  "sandbox": t.sandbox}  # fmt: skip
        return cls(task, train, held, seed=cfg.run.seed, reward_kwargs=kw,
                   chat_kwargs=prompts.template_kwargs(t.chat_template_kwargs))  # fmt: skip

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            rng = np.random.default_rng([self.seed, epoch])
            self._perms = {epoch: rng.permutation(len(self.train))}  # keep one epoch cached
        return self._perms[epoch]

    def indices(self, step: int, n: int) -> list[int]:
        """Example indices of `step` (1-based): global position (step-1)*n + i, epoch-wise."""
        out = []
        for g in range((step - 1) * n, step * n):
            epoch, pos = divmod(g, len(self.train))
            out.append(int(self._perm(epoch)[pos]))
        return out

    def batch(self, step: int, n: int) -> list[data.Example]:
        return [self.train[i] for i in self.indices(step, n)]

    def order_state(self, step: int, n: int) -> dict:
        epoch, pos = divmod(step * n, len(self.train))
        return {"epoch": epoch, "position": pos, "seed": self.seed}

    def rewards(self, texts: Sequence[str], examples: Sequence[data.Example]) -> np.ndarray:
        return np.asarray(self.task.rewards(list(texts), list(examples), **self.reward_kwargs),
                          np.float32)  # fmt: skip


def encode_prompts(tokenizer, conversations, max_prompt_len: int, pad_id: int,
                   chat_kwargs=None):  # fmt: skip
    """(ids [B,P], mask [B,P]) int32: chat template (with the extra template variables
    `chat_kwargs`, e.g. enable_thinking=False), left-truncated, left-padded, bucketed."""
    toks = []
    for conv in conversations:
        ids = tokenizer.apply_chat_template(
            list(conv), add_generation_prompt=True, tokenize=True, return_dict=False,
            **(chat_kwargs or {}),
        )  # fmt: skip
        toks.append(list(ids)[-max_prompt_len:])
    ids, mask = sampling.pad_prompts(toks, pad_id)
    if ids.shape[1] > max_prompt_len:  # the bucket overshoots: pad to the cap exactly
        ids, mask = sampling.pad_prompts(toks, pad_id, length=max_prompt_len)
    return ids, mask


def global_prompts(ids, mask, mesh):
    """Prompts as global arrays laid out as `placement.jit_rollout` expects them (multi-host)."""
    from gbmpo_jax.scale import mesh as mesh_lib

    rows = ids.shape[0] % mesh_lib.num_row_shards(mesh) == 0
    sh = mesh_lib.batch_sharding(mesh, 2) if rows else mesh_lib.replicated(mesh)
    put = lambda x: jax.make_array_from_callback(x.shape, sh, lambda i: x[i])  # noqa: E731
    return put(ids), put(mask)


def make_generate_fn(model, tokenizer, sampling_cfg, max_prompt_len: int, batch_size: int,
                     generate=sampling.generate, chat_kwargs=None):  # fmt: skip
    """`evaluation.GenerateFn` over our sampler; short batches are padded to `batch_size` rows
    so every eval batch reuses one compiled program."""

    def generate_fn(conversations, *, greedy, num_samples, max_new_tokens, key):
        convs = list(conversations)
        n = len(convs)
        convs += [convs[-1]] * (batch_size - n)
        ids, mask = encode_prompts(tokenizer, convs, max_prompt_len, sampling_cfg.pad_token_id,
                                   chat_kwargs)  # fmt: skip
        sc = sampling_cfg.__class__(**{
            **sampling_cfg.__dict__, "greedy": greedy, "group_size": num_samples,
            "max_new_tokens": max_new_tokens,
        })  # fmt: skip
        out = jax.device_get(
            generate(model, ids, mask, jax.random.key(0) if key is None else key, sc)
        )
        texts = sampling.decode(tokenizer, out.tokens, out.lengths, n * num_samples)
        return [texts[i * num_samples : (i + 1) * num_samples] for i in range(n)]

    return generate_fn


def evaluate(model, tokenizer, td: TrainData, sampling_cfg, max_prompt_len: int,
             batch_size: int = 16, generate=sampling.generate) -> dict:  # fmt: skip
    """Greedy accuracy on the fixed held-out subset, as `eval/*` scalars."""
    bs = min(batch_size, len(td.eval_examples))
    gen = make_generate_fn(model, tokenizer, sampling_cfg, max_prompt_len, bs, generate,
                           td.chat_kwargs)  # fmt: skip
    s = evaluate_lib.evaluate(
        td.eval_examples, td.task, gen, greedy=True, max_new_tokens=sampling_cfg.max_new_tokens,
        batch_size=bs, reward_kwargs={k: v for k, v in td.reward_kwargs.items()},
    )  # fmt: skip
    return {
        "eval/accuracy": s["accuracy"],
        "eval/mean_reward": s["mean_reward"],
        "eval/mean_completion_chars": s["mean_completion_chars"],
    }


def final_evaluation(model, tokenizer, cfg, td: TrainData, sampling_cfg, *, batch_size: int = 64,
                     generate=sampling.generate) -> dict:  # fmt: skip
    """Greedy accuracy on `task.final_eval_split` (the first `task.final_eval_size` examples,
    0 = all), as `final/<split>_*` values: accuracy (every assert passes / the answer
    matches), mean_reward (the training reward), problems (how many) and dataset (which
    task and source, e.g. the full MBPP or the sanitized offline subset)."""
    t = cfg.task
    exs = td.task.load(t.final_eval_split, t.source, dict(t.options))
    if t.final_eval_size:
        exs = exs[: t.final_eval_size]
    if not exs:
        raise ValueError(f"task.final_eval_split={t.final_eval_split!r} of {t.name!r} is empty")
    bs = min(batch_size, len(exs))
    gen = make_generate_fn(model, tokenizer, sampling_cfg, max_prompt_len=t.max_prompt_len,
                           batch_size=bs, generate=generate, chat_kwargs=td.chat_kwargs)  # fmt: skip
    s = evaluate_lib.evaluate(
        exs, td.task, gen, greedy=True, max_new_tokens=sampling_cfg.max_new_tokens,
        batch_size=bs, reward_kwargs=dict(td.reward_kwargs),
    )  # fmt: skip
    pre = f"final/{t.final_eval_split}_"
    return {
        pre + "accuracy": s["accuracy"],
        pre + "mean_reward": s["mean_reward"],
        pre + "problems": len(exs),
        pre + "mean_completion_chars": s["mean_completion_chars"],
        pre + "dataset": f"{t.name} ({t.source or td.task.default_source})",
    }


def sft_batch(td: TrainData, tokenizer, rng: np.random.Generator, batch_size: int,
              max_prompt_len: int) -> dict:  # fmt: skip
    """Prompt + gold `reference` + end-of-turn, in the training batch layout."""
    idx = rng.integers(0, len(td.train), batch_size)
    exs = [td.train[i] for i in idx]
    missing = [e.id for e in exs if not e.reference]
    if missing:
        raise ValueError(f"warm-up needs gold references; {missing[0]} has none")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids, mask = encode_prompts(tokenizer, [e.prompt for e in exs], max_prompt_len, pad,
                               td.chat_kwargs)  # fmt: skip
    eos = tokenizer.eos_token_id
    comps = [tokenizer(e.reference, add_special_tokens=False)["input_ids"] + [eos] for e in exs]
    t = sampling.bucket_length(max(map(len, comps)))
    c_ids = np.full((batch_size, t), pad, np.int32)
    c_mask = np.zeros((batch_size, t), np.int32)
    for i, c in enumerate(comps):
        c = c[:t]
        c_ids[i, : len(c)], c_mask[i, : len(c)] = c, 1
    return {
        "input_ids": np.concatenate([ids, c_ids], axis=1),
        "attention_mask": np.concatenate([mask, c_mask], axis=1),
        "completion_mask": c_mask,
    }
