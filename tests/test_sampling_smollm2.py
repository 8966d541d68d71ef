"""SmolLM2-135M-Instruct: greedy rollouts match transformers' greedy `generate` (torch CPU,
same float32 weights via models.save_pretrained) token for token, and generate_text's chat
path gives the same text."""

import jax
import numpy as np
import pytest

from gbmpo_jax import models
from gbmpo_jax.sampler import sampling

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [
        {"role": "system", "content": "You are a terse math tutor."},
        {"role": "user", "content": "What is 12 times 7? Explain briefly."},
    ],
]
NEW = 32


@pytest.fixture(scope="module")
def hf(smollm2_hf_dir):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2_hf_dir, dtype=torch.float32).eval()
    return torch, model, models.load_tokenizer(smollm2_hf_dir)


def _hf_generate(torch, model, ids, mask, **kw):
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            do_sample=False,
            max_new_tokens=NEW,
            **kw,
        )
    return out[:, ids.shape[1] :].numpy()


@pytest.mark.slow
@pytest.mark.essential
def test_smollm2_greedy_matches_transformers(smollm2_model, hf):
    torch, hf_model, tok = hf
    stops = sampling.default_stop_token_ids(tok, smollm2_model.config)
    assert tok.convert_tokens_to_ids("<|im_end|>") in stops
    prompts = [
        tok.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=False)
        for c in CHATS
    ]
    pad = tok.pad_token_id if tok.pad_token_id is not None else stops[0]
    ids, mask = sampling.pad_prompts(prompts, pad)

    # exactly NEW tokens on both sides: stop tokens banned until the end
    cfg = sampling.SamplingConfig(
        NEW, greedy=True, min_new_tokens=NEW, stop_token_ids=stops, pad_token_id=pad
    )
    ours = jax.device_get(sampling.generate(smollm2_model, ids, mask, jax.random.key(0), cfg))
    ref = _hf_generate(
        torch, hf_model, ids, mask, min_new_tokens=NEW, eos_token_id=list(stops), pad_token_id=pad
    )
    assert ref.shape == (len(CHATS), NEW)
    np.testing.assert_array_equal(ours.tokens, ref)

    # the chat path: template, padding, stop at <|im_end|>, decode without special tokens
    texts = sampling.generate_text(smollm2_model, tok, CHATS, max_new_tokens=NEW, greedy=True)
    ref = _hf_generate(torch, hf_model, ids, mask, eos_token_id=list(stops), pad_token_id=pad)
    expected = [tok.decode(r.tolist(), skip_special_tokens=True) for r in ref]
    assert texts == expected
    assert all(len(t) > 0 for t in texts)
