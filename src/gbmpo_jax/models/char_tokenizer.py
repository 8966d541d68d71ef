"""A character-level tokenizer with a ChatML chat template, for tiny CPU models.

Smoke runs, tests and the CPU demo train models with a vocabulary of about a hundred tokens:
one per printable ASCII character plus newline, and the specials `<|endoftext|>` (EOS/pad),
`<|im_start|>`, `<|im_end|>` (end of turn) and `<unk>`. It is a real
`transformers.PreTrainedTokenizerFast`, so the whole pipeline (chat template, padding,
`decode(skip_special_tokens=True)`, `save_pretrained`) treats it like any hub tokenizer.

It is built as a byte-level BPE with no merges (GPT-2 byte alphabet: space is "Ġ", newline
"Ċ"), the pipeline transformers itself rebuilds for a `qwen2` model directory: an export
(`models.save_pretrained`) loaded back with `AutoTokenizer` becomes a `Qwen2Tokenizer` and must
encode exactly as training did. A WordLevel tokenizer there loses every space and newline.
Characters outside the vocabulary (tabs, non-ASCII) are dropped, by this tokenizer and by the
reloaded one alike.
"""

from __future__ import annotations

import string

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>")
CHARS = "\n" + "".join(c for c in string.printable if c.isprintable())

# transformers' Qwen2Tokenizer pre-tokenisation regex (tokenization_qwen2.PRETOKENIZE_REGEX)
_QWEN2_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
    r"""\s*[\r\n]+|\s+(?!\S)|\s+"""
)

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _gpt2_bytes_to_unicode() -> dict[int, str]:
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    out, n = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + n)
            n += 1
    return out


_BYTE_SYMBOLS = _gpt2_bytes_to_unicode()


def vocab() -> dict[str, int]:
    """Token -> id: the specials, then one byte-level symbol per character of CHARS."""
    toks = list(SPECIALS) + [_BYTE_SYMBOLS[ord(c)] for c in CHARS]
    return {t: i for i, t in enumerate(toks)}


def make():
    """Builds the tokenizer in memory (no files, no network)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # As Qwen2Tokenizer builds it (NFC, its split regex, byte-level, BPE without unk), so an
    # export reloads to the same token ids; with no merges every character is one token.
    tok = Tokenizer(models.BPE(vocab=vocab(), merges=[], unk_token=None, fuse_unk=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>", "<|endoftext|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast
