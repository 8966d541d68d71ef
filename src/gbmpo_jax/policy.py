"""From a run config to the objects a run needs: model, tokenizer and the jitted step pieces.

`load_model_and_tokenizer(cfg)` resolves `model.path`:
  * "random": a `presets` shape initialised from `run.seed` (smoke runs, demo, benchmarks);
  * "smollm2": the SmolLM2-135M-Instruct GGUF installed by `make install`;
  * a local HF directory or .gguf file;
  * otherwise a hub id (`Qwen/Qwen3-1.7B`), fetched with `huggingface_hub.snapshot_download`
    (honours HF_HUB_OFFLINE; this is the only network access in the package).
`model.tokenizer = "char"` selects the built-in character tokenizer.

`build_objective(cfg, model_config)` returns the pure pieces: apply_fn, StepConfig, optimizer,
divergence and its parameters, advantage function and the sampling config.
"""

from __future__ import annotations

import dataclasses
import pathlib
import zipfile
from typing import Any, NamedTuple

import jax
import numpy as np

from gbmpo_jax import models, seeds
from gbmpo_jax.config import Config, ConfigError
from gbmpo_jax.models import char_tokenizer, presets
from gbmpo_jax.rl import advantages, divergences
from gbmpo_jax.rl.logprobs import SplitHead
from gbmpo_jax.rl.optim import make_optimizer
from gbmpo_jax.rl.train_step import StepConfig
from gbmpo_jax.sampler.sampling import SamplingConfig, default_stop_token_ids


def resolve_model_path(path: str) -> pathlib.Path:
    if path == "smollm2":
        return models.smollm2_gguf_path()
    p = pathlib.Path(path).expanduser()
    if p.exists():
        return p
    if path.count("/") == 1 and not path.startswith((".", "/")):
        from huggingface_hub import snapshot_download

        try:
            return pathlib.Path(
                snapshot_download(
                    path, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]
                )
            )
        except Exception as e:  # offline, unknown id, no access
            raise ConfigError(
                f"model.path={path!r}: not a local path, and the hub download failed ({e}). "
                f"Offline? Download it once where there is network (`hf download {path} "
                "--local-dir DIR`) and pass model.path=DIR (a HF directory or a .gguf file)"
            ) from e
    raise ConfigError(
        f"model.path={path!r} does not exist (a HF directory, .gguf, 'smollm2', "
        "'random' or a hub id)"
    )


def load_tokenizer(cfg: Config):
    if cfg.model.tokenizer == "char":
        return char_tokenizer.make()
    if cfg.model.tokenizer:
        t = cfg.model.tokenizer
        if t.startswith(("/", ".")) and not pathlib.Path(t).exists():
            hint = (
                " (run `make qwen3-tokenizer`)" if t.rstrip("/").endswith("qwen3-tokenizer") else ""
            )
            raise ConfigError(f"model.tokenizer={t!r} does not exist{hint}")
        return models.load_tokenizer(resolve_model_path(t))
    if cfg.model.path == "random":
        raise ConfigError("model.path=random needs model.tokenizer (e.g. 'char' or a HF dir)")
    tok = models.load_tokenizer(resolve_model_path(cfg.model.path))
    tok.padding_side = "left"
    return tok


def load_model_and_tokenizer(cfg: Config):
    model, tokenizer = _load(cfg)
    if model.config.scan_layers != cfg.model.scan_layers:
        mc = dataclasses.replace(model.config, scan_layers=cfg.model.scan_layers)
        model = models.Model(mc, model.params)
    return model, tokenizer


def _load(cfg: Config):
    tokenizer = load_tokenizer(cfg)
    if cfg.model.path == "random":
        mc = presets.model_config(
            cfg.model.random_shape,
            vocab_size=len(tokenizer),
            compute_dtype=cfg.model.compute_dtype,
            remat=cfg.model.remat,
            eos_token_id=(tokenizer.eos_token_id,),
            pad_token_id=tokenizer.pad_token_id,
        )
        key = seeds.key(cfg.run.seed, seeds.MODEL_INIT)
        return models.init_model(mc, key, cfg.model.dtype), tokenizer
    model = models.load_pretrained(
        resolve_model_path(cfg.model.path),
        dtype=cfg.model.dtype,
        compute_dtype=cfg.model.compute_dtype,
        remat=cfg.model.remat,
    )
    if len(tokenizer) > model.config.vocab_size:
        raise ConfigError(
            f"model.tokenizer has {len(tokenizer)} tokens but the model only "
            f"{model.config.vocab_size}: use the model's own tokenizer"
        )
    return model, tokenizer


class Objective(NamedTuple):
    apply_fn: Any  # (params, input_ids, attention_mask) -> logits [N,L,V] fp32
    step_cfg: StepConfig
    optimizer: Any  # optim.Optimizer
    divergence: divergences.Divergence
    div_params: Any
    advantage_fn: Any  # (rewards [N], group_size) -> (advantages [N], metrics)
    sampling: SamplingConfig
    eval_sampling: SamplingConfig


def make_apply_fn(model_config) -> SplitHead:
    """The built-in transformer as ``apply_fn(params, ids, mask) -> logits [N,L,V]``, split at
    its lm_head so the log-prob passes never hold [N,T,V] (`logprobs.SplitHead`)."""

    def hidden_fn(params, input_ids, attention_mask):
        pos = models.positions_from_mask(attention_mask)
        return models.hidden(params, model_config, input_ids, pos, attention_mask)[0]

    def head_fn(params, h):
        return models.lm_head(params, model_config, h)

    def shared_prompt_fn(params, input_ids, attention_mask, t, group):
        return models.hidden_shared_prompt(params, model_config, input_ids, attention_mask, t,
                                           group)  # fmt: skip

    return SplitHead(hidden_fn, head_fn, shared_prompt_fn)


def load_mirror_params(path: str) -> dict:
    p = pathlib.Path(path)
    if not p.is_file():
        raise ConfigError(f"objective.mirror_params_path={path!r} is not a file (.npz from meta)")
    where = f"objective.mirror_params_path={path!r}"
    keys = ("v", "w", "b", "a", "c")
    if not zipfile.is_zipfile(p):
        raise ConfigError(
            f"{where}: not a .npz archive (an .npz is a zip file); pass the .npz that meta "
            "saves (mirror_best.npz / mirror_mean.npz)"
        )
    try:
        with np.load(p, allow_pickle=False) as z:
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise ConfigError(
                    f"{where}: the archive lacks {missing} (it holds {sorted(z.files)}); pass "
                    "the .npz that meta saves (mirror_best.npz / mirror_mean.npz)"
                )
            params = {k: np.asarray(z[k], np.float32) for k in keys}
    except (OSError, ValueError, EOFError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(
            f"{where}: not a readable .npz archive ({str(e).splitlines()[0]}); pass the .npz "
            "that meta saves (mirror_best.npz / mirror_mean.npz)"
        ) from None
    try:
        divergences.validate_mirror_params(params)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None
    return params


def resolved_scale_rewards(cfg: Config) -> str:
    """objective.scale_rewards with "auto" resolved (grpo -> group; dr_grpo / rloo -> none)."""
    return advantages.resolve_scale(cfg.objective.advantage, cfg.objective.scale_rewards)


def build_objective(cfg: Config, model_config, tokenizer) -> Objective:
    """The run's pure pieces. The config sections are passed as they are; what this adds is
    only what the config cannot know: the tokenizer's stop and pad ids (rollout), the
    schedule's length (optim) and the divergence's parameters (objective)."""
    o, r = cfg.objective, cfg.rollout
    options = {"init": o.mirror_init} if o.divergence == "neural_mirror" else {}
    div = divergences.get(o.divergence, **options)
    if o.mirror_params_path:
        div_params = load_mirror_params(o.mirror_params_path)
    else:
        div_params = div.init_params(jax.random.key(cfg.run.seed))
    stops = r.stop_token_ids or default_stop_token_ids(tokenizer, model_config)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    sampling = dataclasses.replace(r, stop_token_ids=stops, pad_token_id=pad)
    # evaluation decodes greedily, one completion per prompt, without the training-time
    # sampling filters (the temperature only scales the returned log-probs)
    eval_sampling = dataclasses.replace(
        sampling, group_size=1, greedy=True, top_p=1.0, top_k=0, min_p=0.0,
        repetition_penalty=1.0, min_new_tokens=0,
    )  # fmt: skip
    step_cfg = StepConfig(o, sampling, cfg.lora if cfg.lora.enabled else None)
    optimizer = make_optimizer(cfg.optim, total_steps=max(cfg.run.steps * o.mu, 1))
    adv = advantages.get(o.advantage, scale_rewards=resolved_scale_rewards(cfg))
    return Objective(make_apply_fn(model_config), step_cfg, optimizer, div, div_params, adv,
                     sampling, eval_sampling)  # fmt: skip
