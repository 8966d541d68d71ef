"""Hugging Face directories <-> (ModelConfig, params): safetensors read/write and name mapping.

A HF directory holds ``config.json`` and either ``model.safetensors`` or several shards listed in
``model.safetensors.index.json``. Tensors are read through a small memory-mapped safetensors
reader (``safetensors.numpy`` cannot read bfloat16) and stacked per layer into the layout of
`params.param_shapes`; HF ``nn.Linear`` weights are [out, in], ours are [in, ...out].

Writing is atomic: everything goes to a temporary sibling directory that is renamed into place
only when complete, so an error leaves no half-written model behind.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable, Iterator

import ml_dtypes
import numpy as np

from gbmpo_jax.models.config import ModelConfig, canonical_dtype, from_hf_dict, to_hf_dict
from gbmpo_jax.models.params import param_shapes

_ST_DTYPES = {
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F64": np.dtype(np.float64),
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}
_NP_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
INDEX_NAME = "model.safetensors.index.json"
DEFAULT_SHARD_BYTES = 2 * 1024**3


# --------------------------------------------------------------------------- safetensors codec
def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of one .safetensors file as read-only memory-mapped numpy arrays."""
    path = pathlib.Path(path)
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    out = {}
    for name, info in header.items():
        if info["dtype"] not in _ST_DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        out[name] = data[start:end].view(_ST_DTYPES[info["dtype"]]).reshape(info["shape"])
    return out


def write_safetensors(path: str | os.PathLike, tensors: dict[str, np.ndarray]) -> None:
    """Writes tensors (float32/float16/bfloat16) in the safetensors format (``format: pt``)."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, arr in tensors.items():
        nbytes = arr.size * arr.dtype.itemsize
        header[name] = {
            "dtype": _ST_NAMES[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for arr in tensors.values():
            f.write(np.ascontiguousarray(arr).tobytes())


# --------------------------------------------------------------------------- name mapping
def _hf_layer_names(config: ModelConfig) -> dict[str, tuple[str, Callable, Callable]]:
    """Our layer leaf -> (HF name suffix, ours->HF per-layer transform, HF->ours transform)."""
    c = config
    H, K, D, E = c.num_heads, c.num_kv_heads, c.head_dim, c.hidden_size

    def lin(shape):  # HF [out,in] <-> ours [in, *out]
        return (lambda a: a.reshape(a.shape[0], -1).T, lambda a: a.T.reshape(shape))

    names = {
        "attn_norm": ("input_layernorm.weight", None, None),
        "mlp_norm": ("post_attention_layernorm.weight", None, None),
        "q": ("self_attn.q_proj.weight", *lin((E, H, D))),
        "k": ("self_attn.k_proj.weight", *lin((E, K, D))),
        "v": ("self_attn.v_proj.weight", *lin((E, K, D))),
        "o": (
            "self_attn.o_proj.weight",
            lambda a: a.reshape(H * D, E).T,
            lambda a: a.T.reshape(H, D, E),
        ),
        "gate": ("mlp.gate_proj.weight", *lin((E, c.intermediate_size))),
        "up": ("mlp.up_proj.weight", *lin((E, c.intermediate_size))),
        "down": ("mlp.down_proj.weight", *lin((c.intermediate_size, E))),
        "q_bias": ("self_attn.q_proj.bias", lambda a: a.reshape(-1), lambda a: a.reshape(H, D)),
        "k_bias": ("self_attn.k_proj.bias", lambda a: a.reshape(-1), lambda a: a.reshape(K, D)),
        "v_bias": ("self_attn.v_proj.bias", lambda a: a.reshape(-1), lambda a: a.reshape(K, D)),
        "q_norm": ("self_attn.q_norm.weight", None, None),
        "k_norm": ("self_attn.k_norm.weight", None, None),
    }
    return {k: names[k] for k in param_shapes(config)["layers"]}


def _hf_shape(our_shape: tuple, name: str) -> tuple:
    if name.endswith("bias"):
        return (int(np.prod(our_shape)),)
    if len(our_shape) == 1:
        return our_shape
    if name.endswith("o_proj.weight"):
        return (our_shape[-1], int(np.prod(our_shape[:-1])))
    return (int(np.prod(our_shape[1:])), our_shape[0])


def params_from_hf(config: ModelConfig, tensors: dict[str, np.ndarray], dtype: str) -> dict:
    """Our numpy params pytree from HF-named tensors; ValueError names a missing/misshapen one."""
    dt = _NP_DTYPES[canonical_dtype(dtype)]
    shapes = param_shapes(config)

    def get(name, want):
        if name not in tensors:
            raise ValueError(f"checkpoint lacks tensor {name!r} (expected shape {want})")
        arr = tensors[name]
        if tuple(arr.shape) != tuple(want):
            raise ValueError(
                f"tensor {name!r} has shape {tuple(arr.shape)}, expected {tuple(want)} "
                f"for this config.json"
            )
        return arr

    params = {
        "embed": get("model.embed_tokens.weight", shapes["embed"]).astype(dt),
        "final_norm": get("model.norm.weight", shapes["final_norm"]).astype(dt),
        "layers": {},
    }
    if not config.tie_word_embeddings:
        E, V = shapes["lm_head"]
        params["lm_head"] = get("lm_head.weight", (V, E)).T.astype(dt)
    for leaf, (suffix, _, from_hf) in _hf_layer_names(config).items():
        shape = shapes["layers"][leaf]
        out = np.empty(shape, dt)
        for i in range(config.num_layers):
            arr = get(f"model.layers.{i}.{suffix}", _hf_shape(shape[1:], suffix))
            out[i] = (from_hf(arr) if from_hf else arr).astype(dt)
        params["layers"][leaf] = out
    return params


def hf_from_params(config: ModelConfig, params: dict) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, numpy array) for every tensor a HF checkpoint of `config` holds."""
    yield "model.embed_tokens.weight", np.asarray(params["embed"])
    for i in range(config.num_layers):
        for leaf, (suffix, to_hf, _) in _hf_layer_names(config).items():
            arr = np.asarray(params["layers"][leaf][i])
            yield f"model.layers.{i}.{suffix}", (to_hf(arr) if to_hf else arr)
    yield "model.norm.weight", np.asarray(params["final_norm"])
    if not config.tie_word_embeddings:
        yield "lm_head.weight", np.asarray(params["lm_head"]).T


# --------------------------------------------------------------------------- directories
def read_hf_tensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    """All tensors of a HF directory (single file or sharded with an index)."""
    index = path / INDEX_NAME
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {path}")
    tensors = {}
    for name in files:
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path / name} listed in {INDEX_NAME} is missing")
        tensors.update(read_safetensors(path / name))
    return tensors


def load_hf_config(path, compute_dtype="float32", remat=False) -> ModelConfig:
    """ModelConfig from ``path/config.json``."""
    cfg_file = pathlib.Path(path) / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file} not found: expected a Hugging Face model directory")
    return from_hf_dict(read_json(cfg_file), compute_dtype, remat)


def read_json(path: pathlib.Path) -> dict:
    """A model directory's JSON file; a corrupt one is named in the error."""
    try:
        return json.loads(pathlib.Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(
            f"{path} is not valid JSON ({e}); re-download or re-export the model directory"
        ) from None


def load_hf_dir(path, dtype="float32", compute_dtype=None, remat=False):
    """(ModelConfig, numpy params) from a HF directory."""
    dtype = canonical_dtype(dtype)
    config = load_hf_config(path, compute_dtype or dtype, remat)
    return config, params_from_hf(config, read_hf_tensors(pathlib.Path(path)), dtype)


def _shards(items, max_bytes):
    shard, size = {}, 0
    for name, arr in items:
        if shard and size + arr.nbytes > max_bytes:
            yield shard
            shard, size = {}, 0
        shard[name], size = arr, size + arr.nbytes
    if shard:
        yield shard


def save_hf_dir(
    config: ModelConfig,
    params: dict,
    path,
    tokenizer=None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> pathlib.Path:
    """Writes a HF directory atomically; an existing *model* directory at `path` is replaced."""
    path = pathlib.Path(path).absolute()
    if path.exists() and not path.is_dir():
        raise ValueError(f"save path {path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not (path / "config.json").is_file():
        raise ValueError(
            f"save path {path} is a non-empty directory without config.json; refusing to "
            f"replace it: choose a new or empty directory"
        )
    dtypes = {np.asarray(a).dtype for a in (params["embed"], params["final_norm"])}
    dtype = canonical_dtype(dtypes.pop().name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(to_hf_dict(config, dtype), indent=2) + "\n")
        shards = list(_shards(hf_from_params(config, params), max_shard_bytes))
        if len(shards) == 1:
            write_safetensors(tmp / "model.safetensors", shards[0])
        else:
            weight_map, total = {}, 0
            for i, shard in enumerate(shards):
                fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                write_safetensors(tmp / fname, shard)
                weight_map.update(dict.fromkeys(shard, fname))
                total += sum(a.nbytes for a in shard.values())
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        if tokenizer is not None:
            from gbmpo_jax.models.tokenizer import check_reload

            tokenizer.save_pretrained(str(tmp))
            check_reload(tokenizer, tmp)  # the export must tokenise as the run did
        old = None
        if path.exists():
            old = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old / "model")
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
