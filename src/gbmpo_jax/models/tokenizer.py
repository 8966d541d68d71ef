"""load_tokenizer: a transformers tokenizer (with its chat template) from a HF dir or a .gguf.

For a ``.gguf`` the metadata is read by our own parser (`gguf_io.parse_gguf`) and handed to
transformers' GGUF tokenizer converter, the code ``AutoTokenizer(gguf_file=...)`` runs after
*its* reader: that reader imports torch, which a JAX runtime does not install, and takes ~7 s
where ours takes ~0.5 s. The result encodes, decodes and renders the chat template exactly as
``AutoTokenizer`` does (tested against it where torch is installed); nothing is cached on disk.
"""

from __future__ import annotations

import pathlib

import numpy as np

# transformers' names for the special tokens a GGUF gives by id (as `get_gguf_tokenizer` reads them)
_SPECIAL_TOKEN_IDS = {
    "bos_token": "bos_token_id",
    "eos_token": "eos_token_id",
    "unk_token": "unknown_token_id",
    "pad_token": "padding_token_id",
}


def _gguf_tokenizer(path: pathlib.Path):
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer

    from gbmpo_jax.models.gguf_io import parse_gguf

    if path.stat().st_size == 0:
        raise ValueError(f"GGUF file {path} is empty (0 bytes): re-download or re-convert it")
    fields = parse_gguf(path).fields
    grouped = {
        group: {
            name: fields[f"tokenizer.{key}"]
            for key, name in renames.items()
            if f"tokenizer.{key}" in fields
        }
        for group, renames in GGUF_TOKENIZER_MAPPING.items()
    }
    # the converter tests arrays for truth and compares items one by one: plain lists
    spec = {
        k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in grouped["tokenizer"].items()
    }
    if "tokens" not in spec:
        raise ValueError(f"{path} holds no tokenizer (no tokenizer.ggml.tokens metadata)")
    kwargs = grouped["tokenizer_config"]
    if spec.get("tokenizer_type") == "llama":  # llama.cpp adds BOS to sentencepiece vocabularies
        kwargs.setdefault("add_bos_token", True)
    for name, key in _SPECIAL_TOKEN_IDS.items():
        token_id = fields.get(f"tokenizer.ggml.{key}")
        kwargs[name] = spec["tokens"][int(token_id)] if token_id is not None else None
    backend, extra = convert_gguf_tokenizer(fields["general.architecture"], spec)
    return PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs, **extra)


def load_tokenizer(path):
    """Tokenizer for a HF model directory or a ``.gguf`` file.

    Raises FileNotFoundError when the path does not exist or the directory holds no tokenizer.
    """
    from transformers import AutoTokenizer  # lazy: heavy import

    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer path {path} not found (a HF directory or a .gguf file)")
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"tokenizer path {path} is a file but not a .gguf file")
        if path.stat().st_size == 0:
            raise ValueError(f"GGUF file {path} is empty (0 bytes): re-download or re-convert it")
        return _gguf_tokenizer(path)
    from gbmpo_jax.models.hf_io import read_json

    for name in ("config.json", "tokenizer_config.json"):  # name a corrupt file here
        if (path / name).is_file():
            read_json(path / name)
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        raise FileNotFoundError(
            f"no tokenizer.json / tokenizer_config.json in {path}: save one with the model "
            f"(save_pretrained(model, path, tokenizer=tok)) or load it from the .gguf file"
        )
    return AutoTokenizer.from_pretrained(str(path))


# Text that exercises what tokenizers get wrong on reload: spaces, runs of spaces, newlines,
# digits, code, punctuation and the chat template's special tokens.
PROBE_TEXTS = (
    "Natalia sold clips to 48 of her friends in April.\n\nHow many clips? 37 + 8 = 45",
    "def f(x):\n    return [x  * 2, 'a b']  # comment\n\n\nprint(f(3))",
    "  leading and trailing spaces  \n#### 72",
)


def check_reload(tokenizer, directory) -> None:
    """Raises ValueError unless `AutoTokenizer.from_pretrained(directory)` encodes the probe
    texts and a chat prompt exactly as `tokenizer` does (same ids, eos and pad).

    transformers picks the tokenizer class from the directory's `config.json` model type and
    may rebuild the pipeline (a `qwen2` directory always becomes a Qwen2Tokenizer), so a
    saved tokenizer can reload as a different one; an export must not.
    """
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(str(directory))
    problems = []
    for text in PROBE_TEXTS:
        a = tokenizer(text, add_special_tokens=False)["input_ids"]
        b = again(text, add_special_tokens=False)["input_ids"]
        if a != b:
            problems.append(f"{text[:30]!r} -> {a[:8]}... vs {b[:8]}...")
    if getattr(tokenizer, "chat_template", None):
        conv = [{"role": "user", "content": PROBE_TEXTS[0]}]
        kw = {"add_generation_prompt": True, "tokenize": True, "return_dict": False}
        a, b = tokenizer.apply_chat_template(conv, **kw), again.apply_chat_template(conv, **kw)
        if list(a) != list(b):
            problems.append(f"chat prompt -> {list(a)[:8]}... vs {list(b)[:8]}...")
    for attr in ("eos_token_id", "pad_token_id"):
        if getattr(tokenizer, attr) != getattr(again, attr):
            problems.append(f"{attr} {getattr(tokenizer, attr)} vs {getattr(again, attr)}")
    if problems:
        raise ValueError(
            f"the tokenizer saved to {directory} reloads with AutoTokenizer as "
            f"{type(again).__name__} and tokenises differently from the run's "
            f"{type(tokenizer).__name__} ({'; '.join(problems)}): the export would not "
            "reproduce training; save a tokenizer whose class matches the model type"
        )
