"""Convert a GGUF file once into a local HF directory (+ tokenizer) for fast reloads.

    python -m gbmpo_jax.models.convert --gguf PATH --out DIR [--dtype float32|bfloat16]
    python -m gbmpo_jax.models.convert --smollm2 --out artifacts/smollm2-135m

`load_pretrained(DIR)` then takes a fraction of a second instead of dequantising again, and
`load_tokenizer(DIR)` reads the saved tokenizer (chat template included).
"""

from __future__ import annotations

import argparse
import pathlib

from gbmpo_jax.models.model import load_pretrained, save_pretrained, smollm2_gguf_path
from gbmpo_jax.models.tokenizer import load_tokenizer


def convert(gguf_path, out_dir, dtype: str = "float32") -> pathlib.Path:
    """Dequantises `gguf_path` and writes model + tokenizer to `out_dir` (atomically)."""
    model = load_pretrained(gguf_path, dtype=dtype)
    return save_pretrained(model, out_dir, tokenizer=load_tokenizer(gguf_path))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--gguf", help="path of the .gguf file")
    src.add_argument("--smollm2", action="store_true", help="the installed SmolLM2-135M GGUF")
    parser.add_argument("--out", required=True, help="output HF directory")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args(argv)
    try:
        path = smollm2_gguf_path() if args.smollm2 else args.gguf
        out = convert(path, args.out, args.dtype)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
