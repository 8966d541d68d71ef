"""A character-level tokenizer with a ChatML chat template, for tiny CPU models.

Smoke runs, tests and the CPU demo train models with a vocabulary of about a hundred tokens:
one per printable ASCII character plus newline, and the specials `<|endoftext|>` (EOS/pad),
`<|im_start|>`, `<|im_end|>` (end of turn) and `<unk>`. It is a real
`transformers.PreTrainedTokenizerFast`, so the whole pipeline (chat template, padding,
`decode(skip_special_tokens=True)`, `save_pretrained`) treats it like any hub tokenizer.
"""

from __future__ import annotations

import string

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>")
CHARS = "\n" + "".join(c for c in string.printable if c.isprintable())

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def vocab() -> dict[str, int]:
    toks = list(SPECIALS) + list(CHARS)
    return {t: i for i, t in enumerate(toks)}


def make():
    """Builds the tokenizer in memory (no files, no network)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab=vocab(), unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
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
