"""Shared test set-up: 8 simulated CPU devices, no hub access, shared fixtures.

Data comes from the copies that ship with the package (`gbmpo_jax/tasks/bundled_data`), so a clone
with nothing beside it passes."""

import os

# Before JAX initialises: multi-device tests need simulated devices; no test touches the hub.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
# runs' persistent compilation cache (run.compile_cache=auto): a test directory, not ~/.cache
os.environ.setdefault(
    "GBMPO_COMPILE_CACHE",
    os.path.join(__import__("tempfile").gettempdir(), "gbmpo-jax-tests-xla-cache"),
)

import pathlib  # noqa: E402

import pytest  # noqa: E402


# --------------------------------------------------------------------------- SmolLM2 demo model
def _smollm2_gguf() -> pathlib.Path:
    from gbmpo_jax import models

    try:
        return models.smollm2_gguf_path()
    except FileNotFoundError as err:
        if os.environ.get("CI"):
            pytest.fail(str(err))
        pytest.skip(str(err))


@pytest.fixture(scope="session")
def smollm2_model():
    """SmolLM2-135M-Instruct from its Q4_1 GGUF, dequantised to a float32 `models.Model`."""
    from gbmpo_jax import models

    return models.load_pretrained(_smollm2_gguf())


@pytest.fixture(scope="session")
def smollm2_hf_dir(smollm2_model, tmp_path_factory) -> pathlib.Path:
    """The same model saved once as a float32 HF directory with its tokenizer (session tmp)."""
    from gbmpo_jax import models

    out = tmp_path_factory.mktemp("smollm2") / "hf"
    return models.save_pretrained(
        smollm2_model, out, tokenizer=models.load_tokenizer(_smollm2_gguf())
    )


# --------------------------------------------------------------------------- real Qwen3 tokenizer
QWEN3_TOKENIZER = pathlib.Path(__file__).resolve().parents[1] / "artifacts" / "qwen3-tokenizer"


@pytest.fixture(scope="session")
def qwen3_tokenizer_dir() -> pathlib.Path:
    """The real Qwen3 tokenizer (`make qwen3-tokenizer`): CI fails without it, local runs skip."""
    if not (QWEN3_TOKENIZER / "tokenizer.json").is_file():
        msg = f"{QWEN3_TOKENIZER} missing: run `make qwen3-tokenizer` (needs npm)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return QWEN3_TOKENIZER


@pytest.fixture(scope="session")
def qwen3_tokenizer(qwen3_tokenizer_dir):
    from gbmpo_jax import models

    return models.load_tokenizer(qwen3_tokenizer_dir)


class DigitTask:
    """The arithmetic examples scored by the fraction of digit characters: a dense reward, so
    a random tiny model gets non-zero advantages and the update moves its params."""

    kind = "math"

    def rewards(self, texts, examples, **kw):
        return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]


@pytest.fixture(scope="module")
def digit_run():
    """(cfg, model, tokenizer, objective, TrainData) of a tiny random model on the digit
    reward, neural mirror at lambda 10, 2 steps: inner runs whose members move apart."""
    from gbmpo_jax import config as C
    from gbmpo_jax import policy
    from gbmpo_jax.tasks import episodes

    cfg = C.validate(C.override(C.Config(), **{
        "model.path": "random", "model.random_shape": "tiny", "model.tokenizer": "char",
        "task.name": "arithmetic", "task.eval_size": 4, "task.max_prompt_len": 32,
        "rollout.prompts_per_step": 2, "rollout.group_size": 2, "rollout.max_new_tokens": 4,
        "rollout.temperature": 1.0, "objective.divergence": "neural_mirror",
        "objective.coef": 10.0, "objective.mask_truncated_completions": False,
        "optim.lr": 1e-2, "optim.schedule": "constant", "optim.warmup_ratio": 0.0,
        "run.steps": 2,
    }))  # fmt: skip
    model, tok = policy.load_model_and_tokenizer(cfg)
    obj = policy.build_objective(cfg, model.config, tok)
    td = episodes.TrainData.from_config(cfg, tok)
    td.task = DigitTask()
    return cfg, model, tok, obj, td
