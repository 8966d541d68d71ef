"""The SmolLM2-135M-Instruct demo model: GGUF parity with transformers, HF dir round trip."""

import json

import jax
import numpy as np
import pytest

from gbmpo_jax import models

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

PROMPTS = ["The capital of France is", "def add(a, b):\n    return a"]


def _batch(tokenizer):
    enc = tokenizer(PROMPTS, return_tensors="np", padding=True, padding_side="left")
    return enc["input_ids"], enc["attention_mask"]


def _torch_logits(model, ids, mask):
    pos = np.maximum(np.cumsum(mask, -1) - 1, 0)
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(pos),
        )
    return out.logits.float().numpy()


def test_smollm2_config(smollm2_model):
    c = smollm2_model.config
    assert (c.model_type, c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads) == (
        "llama",
        30,
        576,
        9,
        3,
    )
    assert (c.vocab_size, c.tie_word_embeddings, c.head_dim) == (49152, True, 64)
    assert "lm_head" not in smollm2_model.params


@pytest.mark.slow
@pytest.mark.essential
def test_smollm2_gguf_matches_transformers_gguf(smollm2_model, smollm2_hf_dir):
    gguf_path = models.smollm2_gguf_path()
    ref_model = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    ).eval()
    tokenizer = models.load_tokenizer(smollm2_hf_dir)
    ids, mask = _batch(tokenizer)
    assert mask.min() == 0, "prompts of different lengths must exercise left padding"
    ours = np.asarray(models.forward(smollm2_model, ids, mask))
    ref = _torch_logits(ref_model, ids, mask)
    real = mask[..., None] == 1
    assert np.abs(ref).max() > 5
    assert np.max(np.abs(ours - ref) * real) <= 1e-3
    np.testing.assert_array_equal(ours[:, -1].argmax(-1), ref[:, -1].argmax(-1))
    # the converted HF directory loads in transformers with the same logits
    hf = transformers.AutoModelForCausalLM.from_pretrained(smollm2_hf_dir, dtype=torch.float32)
    assert np.max(np.abs(_torch_logits(hf.eval(), ids, mask) - ref) * real) <= 1e-4


def test_smollm2_hf_dir_reload_and_tokenizer(smollm2_model, smollm2_hf_dir):
    cfg = json.loads((smollm2_hf_dir / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["dtype"] == "float32"
    again = models.load_pretrained(smollm2_hf_dir)
    assert again.config == smollm2_model.config
    jax.tree.map(np.testing.assert_array_equal, again.params, smollm2_model.params)
    tok = models.load_tokenizer(smollm2_hf_dir)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert "<|im_start|>user\nHi<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")
    assert tok.convert_tokens_to_ids("<|im_end|>") in again.config.eos_token_id


@pytest.mark.slow
def test_convert_cli_bfloat16(tmp_path, smollm2_model):
    from gbmpo_jax.models.convert import main

    main(["--smollm2", "--out", str(tmp_path / "bf16"), "--dtype", "bfloat16"])
    model = models.load_pretrained(tmp_path / "bf16", dtype="bfloat16")
    assert model.config.compute_dtype == "bfloat16"
    ref = jax.tree.map(lambda a: np.asarray(a.astype("bfloat16")), smollm2_model.params)
    jax.tree.map(np.testing.assert_array_equal, model.params, ref)
    assert models.load_tokenizer(tmp_path / "bf16").chat_template


def test_gguf_tokenizer_matches_transformers_reader():
    """Our torch-free GGUF tokenizer equals AutoTokenizer(gguf_file=...) (which needs torch)."""
    path = models.smollm2_gguf_path()
    ref = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    ours = models.load_tokenizer(path)
    corpus = PROMPTS + [
        " leading space", "37 + 8 = 45\n#### 45", "  several   spaces\t\ttabs\n\n",
        "déjà vu ✓ 日本語", "<|im_start|>user\nhi<|im_end|>", "",
    ]  # fmt: skip
    for text in corpus:
        assert ours(text)["input_ids"] == ref(text)["input_ids"], text
        ids = ref(text)["input_ids"]
        assert ours.decode(ids) == ref.decode(ids)
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+3?"}]
    kw = dict(add_generation_prompt=True, tokenize=True, return_dict=False)
    assert ours.apply_chat_template(conv, **kw) == ref.apply_chat_template(conv, **kw)
    for attr in ("eos_token_id", "bos_token_id", "pad_token_id", "unk_token_id"):
        assert getattr(ours, attr) == getattr(ref, attr), attr
    assert len(ours) == len(ref) and ours.all_special_ids == ref.all_special_ids
