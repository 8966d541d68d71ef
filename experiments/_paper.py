"""Settings shared by the paper-reproduction experiments (PAPER.md section 3).

Not an experiment itself (leading underscore): `gsm8k_*.py` and `mbpp_*.py` start from these
and change only the divergence. `smoke(cfg)` turns any experiment into its CPU smoke variant:
same objective, divergence, task and code paths, but a tiny random model with the character
tokenizer, short lengths and 2 steps.
"""

from gbmpo_jax.config import Config, override

# Tasks whose CPU variants read the offline copy shipped with the package
# (src/gbmpo_jax/bundled_data): only the sanitized MBPP ships, so `mbpp` becomes `mbpp_sanitized`.
BUNDLED_TASK = {"gsm8k": "gsm8k", "mbpp": "mbpp_sanitized", "mbpp_sanitized": "mbpp_sanitized"}

# Divergence coefficients (lambda). KL: TRL's classic beta; ProbL2: the reference code's
# config-class value; neural mirror: the reference code's value (PAPER.md section 2).
COEF = {"kl": 0.04, "prob_l2": 0.1, "neural_mirror": 1e-4}


def gsm8k(divergence: str) -> Config:
    """Qwen3-4B-Instruct-2507, LoRA r=64 on all projections, 2 prompts x G=4, 1,000 steps."""
    return override(
        Config(),
        **{
            "model.path": "Qwen/Qwen3-4B-Instruct-2507",
            "model.dtype": "bfloat16",
            "model.compute_dtype": "bfloat16",
            "model.remat": True,
            "task.name": "gsm8k",
            "task.max_prompt_len": 512,
            "rollout.prompts_per_step": 2,
            "rollout.group_size": 4,
            "rollout.max_new_tokens": 256,
            "rollout.temperature": 0.6,
            "rollout.top_p": 0.95,
            "objective.advantage": "dr_grpo",
            "objective.loss_type": "dr_grpo",
            "objective.divergence": divergence,
            "objective.coef": COEF[divergence],
            "optim.lr": 3e-5,
            "optim.schedule": "cosine",
            "optim.warmup_ratio": 0.1,
            "optim.clip_norm": 1.0,
            "lora.rank": 64,
            "lora.alpha": 64.0,
            "run.steps": 1000,
            "run.eval_every": 100,
            "task.eval_size": 256,
        },
    )


def mbpp(divergence: str) -> Config:
    """Qwen3-1.7B full fine-tuning, 4 prompts x G=32, 1,600 steps, partial-credit reward."""
    return override(
        Config(),
        **{
            "model.path": "Qwen/Qwen3-1.7B",
            "model.dtype": "bfloat16",
            "model.compute_dtype": "bfloat16",
            "model.remat": True,
            "task.name": "mbpp",
            "task.reward": "partial",
            "task.max_prompt_len": 768,
            "task.eval_size": 90,
            "rollout.prompts_per_step": 4,
            "rollout.group_size": 32,
            "rollout.max_new_tokens": 256,
            "rollout.min_new_tokens": 32,
            "rollout.temperature": 0.8,
            "rollout.top_p": 0.9,
            "rollout.top_k": 50,
            "rollout.repetition_penalty": 1.05,
            "objective.advantage": "dr_grpo",
            "objective.loss_type": "dr_grpo",
            "objective.divergence": divergence,
            "objective.coef": COEF[divergence],
            "objective.micro_batches": 8,
            "optim.lr": 1e-5,
            "optim.b2": 0.95,
            "optim.eps": 1e-6,
            "optim.schedule": "linear",
            "optim.warmup_ratio": 0.0,
            "run.steps": 1600,
            "run.eval_every": 200,
        },
    )


def smoke(cfg: Config) -> Config:
    """The CPU smoke variant of `cfg`: tiny random model, char tokenizer, 2 steps, and the
    dataset copy that ships with the package (no network)."""
    local = {}
    if cfg.task.name in BUNDLED_TASK:
        local = {"task.name": BUNDLED_TASK[cfg.task.name], "task.source": "bundled"}
    return override(
        cfg,
        **local,
        **{
            "name": cfg.name + ":smoke",
            "model.path": "random",
            "model.random_shape": "tiny",
            "model.tokenizer": "char",
            "model.dtype": "float32",
            "model.compute_dtype": "float32",
            "model.remat": False,
            "task.max_prompt_len": 192,
            "task.eval_size": 2,
            "task.code_timeout_s": 2.0,
            "rollout.prompts_per_step": 2,
            "rollout.group_size": 2,
            "rollout.max_new_tokens": 8,
            "rollout.min_new_tokens": min(cfg.rollout.min_new_tokens, 4),
            "objective.micro_batches": 2 if cfg.objective.micro_batches > 1 else 1,
            "lora.rank": min(cfg.lora.rank, 4),
            "lora.alpha": min(cfg.lora.alpha, 4.0),
            "run.steps": 2,
            "run.eval_every": 0,
            "run.save_every_steps": 1,
            "run.samples_to_log": 1,
        },
    )
