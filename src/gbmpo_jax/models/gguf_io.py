"""GGUF files (llama.cpp) -> HF config dict + HF-named float32 tensors.

Tensors are dequantised with the `gguf` package (any quantisation it supports, e.g. Q4_1/Q8_0)
and renamed to Hugging Face names, so `hf_io.params_from_hf` does the rest. The file layout
(header, metadata, tensor infos; spec: ggml/docs/gguf.md) is parsed here from one memory map:
`gguf.GGUFReader` builds a numpy view per metadata item and needs ~2.5 s for SmolLM2's
100k-entry tokenizer arrays, this parser ~0.1 s.

llama.cpp's converter permutes the rows of ``attn_q``/``attn_k`` for its interleaved RoPE
(``convert_hf_to_gguf.py``: ``w.reshape(n_head, 2, d/2, in).swapaxes(1, 2)``); we apply the
inverse, ``w.reshape(n_head, d/2, 2, in).swapaxes(1, 2)``, to get HF's rotate-half layout.

Deviation: only the ``llama`` architecture without a ``rope_freqs`` tensor is supported (the
Llama-3.1 GGUFs carry their rope scaling as that tensor; convert those from HF instead).
"""

from __future__ import annotations

import pathlib
import struct
from typing import Any, NamedTuple

import numpy as np

SUPPORTED_GGUF_ARCHS: tuple[str, ...] = ("llama",)
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}  # fmt: skip
_STRING, _ARRAY = 8, 9
_MAGIC = b"GGUF"


class GGUFTensor(NamedTuple):
    name: str
    shape: tuple[int, ...]  # ggml order: innermost (row) dimension first
    tensor_type: Any  # gguf.GGMLQuantizationType
    data: np.ndarray  # uint8 bytes [rows..., row_bytes] (what gguf.quants.dequantize takes)


class GGUFFile(NamedTuple):
    fields: dict[str, Any]
    tensors: list[GGUFTensor]


def parse_gguf(path: pathlib.Path) -> GGUFFile:
    """Metadata and (memory-mapped, still quantised) tensors of a GGUF v2/v3 file."""
    import gguf  # lazy: only GGUF users need it

    buf = np.memmap(path, dtype=np.uint8, mode="r")
    raw = memoryview(buf)
    pos = 0

    def unpack(fmt):
        nonlocal pos
        (value,) = struct.unpack_from(fmt, raw, pos)
        pos += struct.calcsize(fmt)
        return value

    def string():
        nonlocal pos
        n = unpack("<Q")
        pos += n
        return bytes(raw[pos - n : pos]).decode("utf-8", errors="replace")

    def value(vtype):
        nonlocal pos
        if vtype == _STRING:
            return string()
        if vtype == _ARRAY:
            etype, count = unpack("<I"), unpack("<Q")
            if etype in _SCALARS and etype != 7:
                arr = np.frombuffer(raw, np.dtype(_SCALARS[etype]), count, pos)
                pos += arr.nbytes
                return arr
            return [value(etype) for _ in range(count)]
        if vtype not in _SCALARS:
            raise ValueError(f"{path}: corrupt GGUF metadata (value type {vtype})")
        return unpack(_SCALARS[vtype])

    if bytes(raw[:4]) != _MAGIC:
        raise ValueError(f"{path} is not a GGUF file (bad magic {bytes(raw[:4])!r})")
    pos = 4
    version = unpack("<I")
    if version not in (2, 3):
        raise ValueError(f"{path}: GGUF version {version} unsupported (2 or 3)")
    n_tensors, n_fields = unpack("<Q"), unpack("<Q")
    fields = {}
    for _ in range(n_fields):
        key = string()
        fields[key] = value(unpack("<I"))
    infos = []
    for _ in range(n_tensors):
        name = string()
        shape = tuple(unpack("<Q") for _ in range(unpack("<I")))
        infos.append((name, shape, gguf.GGMLQuantizationType(unpack("<I")), unpack("<Q")))
    align = int(fields.get("general.alignment", 32))
    start = pos + (-pos % align)
    tensors = []
    for name, shape, qtype, offset in infos:
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        row_bytes = shape[0] // block * type_size
        rows = tuple(reversed(shape[1:]))
        nbytes = row_bytes * int(np.prod(rows, dtype=np.int64))
        data = buf[start + offset : start + offset + nbytes].reshape(*rows, row_bytes)
        tensors.append(GGUFTensor(name, shape, qtype, data))
    return GGUFFile(fields, tensors)


def _field(reader: GGUFFile, key, default=None):
    if key not in reader.fields:
        if default is None:
            raise ValueError(f"GGUF file lacks metadata field {key!r}")
        return default
    return reader.fields[key]


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's q/k row permutation. w [n_head*D, in] -> same shape."""
    return (
        w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _open(path):
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} not found")
    if path.stat().st_size == 0:
        raise ValueError(f"GGUF file {path} is empty (0 bytes): re-download or re-convert it")
    reader = parse_gguf(path)
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_GGUF_ARCHS:
        raise ValueError(
            f"GGUF architecture {arch!r} unsupported; supported: {list(SUPPORTED_GGUF_ARCHS)}"
        )
    if any(t.name == "rope_freqs.weight" for t in reader.tensors):
        raise ValueError(
            f"{path.name} stores rope scaling as a rope_freqs tensor (Llama 3.1 style), which the "
            f"GGUF reader does not support: convert the model from its HF directory instead"
        )
    return reader, arch


def _config(reader, arch: str) -> dict:
    """HF config.json dict from the GGUF metadata (no tensor data is touched)."""
    n_head = int(_field(reader, f"{arch}.attention.head_count"))
    hidden = int(_field(reader, f"{arch}.embedding_length"))
    shapes = {t.name: tuple(int(s) for s in reversed(t.shape)) for t in reader.tensors}
    if "token_embd.weight" not in shapes:
        raise ValueError("GGUF file lacks tensor 'token_embd.weight'")

    def token_id(key):
        field = reader.fields.get(f"tokenizer.ggml.{key}")
        return None if field is None else int(field)

    config = {
        "model_type": "llama",
        "vocab_size": shapes["token_embd.weight"][0],
        "hidden_size": hidden,
        "intermediate_size": int(_field(reader, f"{arch}.feed_forward_length")),
        "num_hidden_layers": int(_field(reader, f"{arch}.block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": int(_field(reader, f"{arch}.attention.head_count_kv", n_head)),
        "head_dim": int(_field(reader, f"{arch}.attention.key_length", hidden // n_head)),
        "rms_norm_eps": float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon")),
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        },
        "max_position_embeddings": int(_field(reader, f"{arch}.context_length", 4096)),
        "tie_word_embeddings": "output.weight" not in shapes,
        "bos_token_id": token_id("bos_token_id"),
        "eos_token_id": token_id("eos_token_id"),
        "pad_token_id": token_id("padding_token_id"),
    }
    scaling = reader.fields.get(f"{arch}.rope.scaling.type")
    if scaling is not None and scaling not in ("none", "linear"):
        raise ValueError(f"GGUF rope scaling {scaling!r} unsupported (none/linear)")
    if scaling == "linear":
        factor = float(_field(reader, f"{arch}.rope.scaling.factor"))
        config["rope_parameters"].update(rope_type="linear", factor=factor)
    return config


def read_gguf_config(path: str | pathlib.Path) -> dict:
    """HF config.json dict of a GGUF file, without dequantising anything."""
    return _config(*_open(path))


def read_gguf(path: str | pathlib.Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(HF config.json dict, {HF name: float32 array}) from a llama-architecture GGUF file."""
    import gguf

    reader, arch = _open(path)
    config = _config(reader, arch)
    n_head, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    tensors: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        w = w.reshape(tuple(int(s) for s in reversed(t.shape)))
        parts = t.name.split(".")
        if parts[0] == "blk":
            kind = parts[2]
            if kind not in _LAYER_NAMES:
                raise ValueError(f"GGUF tensor {t.name!r} is not a supported llama tensor")
            if kind == "attn_q":
                w = _unpermute(w, n_head)
            elif kind == "attn_k":
                w = _unpermute(w, n_kv)
            tensors[f"model.layers.{parts[1]}.{_LAYER_NAMES[kind]}.{parts[3]}"] = w
        elif t.name == "token_embd.weight":
            tensors["model.embed_tokens.weight"] = w
        elif t.name == "output_norm.weight":
            tensors["model.norm.weight"] = w
        elif t.name == "output.weight":
            tensors["lm_head.weight"] = w
        else:
            raise ValueError(f"GGUF tensor {t.name!r} is not a supported llama tensor")
    return config, tensors
