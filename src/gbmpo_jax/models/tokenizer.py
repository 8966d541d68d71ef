"""load_tokenizer: a transformers tokenizer (with its chat template) from a HF dir or a .gguf.

transformers builds a fast tokenizer from the GGUF metadata itself (``gguf_file=``), including
``tokenizer.chat_template``; nothing is cached on disk.
"""

from __future__ import annotations

import pathlib


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
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        raise FileNotFoundError(
            f"no tokenizer.json / tokenizer_config.json in {path}: save one with the model "
            f"(save_pretrained(model, path, tokenizer=tok)) or load it from the .gguf file"
        )
    return AutoTokenizer.from_pretrained(str(path))
