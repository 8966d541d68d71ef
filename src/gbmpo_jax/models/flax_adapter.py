"""A user's flax causal LM (NNX or linen) behind the train step's model contract.

The RL core never sees a model object: it takes a params pytree and
``apply_fn(params, input_ids [N,L] int32, attention_mask [N,L] int32) -> logits [N,L,V]``
(DESIGN.md, "Objective and train step"). The JAX ecosystem's LLMs are flax modules (Tunix,
MaxText and bonsai use NNX), so these adapters split a module at the edge into a static part
and a plain nested dict of its trainable arrays, and merge them back inside ``apply_fn``:

    apply_fn, params, to_module = from_nnx(model)              # nnx.Module
    apply_fn, params, to_module = from_linen(module, variables) # linen module + its variables
    state = train_step.init_state(params, optimizer, ...)       # then make_update(apply_fn, ...)
    trained = to_module(state.params)                           # back to the user's module

``params`` is a plain dict (``nnx.State.to_pure_dict``), so LoRA targeting by path name,
float32 master weights, optax and Orbax checkpoints treat it like the built-in transformer's
params. It is a copy: the jitted update donates its state, which would otherwise delete the
arrays of the user's module. Logits are returned as float32 (log-probs are always float32).

``call(module, input_ids, attention_mask)`` adapts other signatures, e.g. a HF-style module
``lambda m, ids, mask: m(ids, attention_mask=mask).logits``; the default calls
``module(input_ids, attention_mask)``.

At real vocabularies the full logits are the largest activation (Qwen3: 151,669 fp32 per
token). A model that can return its final hidden states can skip them: wrap it as
``logprobs.SplitHead(hidden_fn, head_fn)`` (``hidden_fn(params, ids, mask) -> [N,L,E]``,
``head_fn(params, hidden) -> logits`` float32) and the log-prob passes compute the head and the
log-softmax in chunks; the ``apply_fn`` returned here keeps the full-logits path.

Scope: the update and the log-prob passes. Rollouts use the built-in transformer's KV-cache
sampler (`sampling.py`), which needs the cache layout of `models.transformer`; a flax model
samples with its own generate and hands the tokens to the update.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def _default_call(module, input_ids, attention_mask):
    return module(input_ids, attention_mask)


def from_nnx(model, call: Callable = _default_call, wrt: Any = None):
    """``(apply_fn, params, to_module)`` for an ``nnx.Module``.

    ``wrt``: the variable filter that is trained (default ``nnx.Param``); every other variable
    (batch statistics, RNG counters, caches) is carried unchanged as static state."""
    from flax import nnx

    graphdef, trainable, rest = nnx.split(model, wrt if wrt is not None else nnx.Param, ...)
    params = jax.tree.map(jnp.copy, nnx.to_pure_dict(trainable))

    def module_of(p):
        state = jax.tree.map(lambda x: x, trainable)  # a fresh State to fill; the template stays
        nnx.replace_by_pure_dict(state, p)
        return nnx.merge(graphdef, state, rest)

    def apply_fn(p, input_ids, attention_mask):
        return call(module_of(p), input_ids, attention_mask).astype(jnp.float32)

    return apply_fn, params, module_of


def from_linen(module, variables, call: Callable | None = None, collection: str = "params"):
    """``(apply_fn, params, to_variables)`` for a linen module and its initialised variables.

    ``variables[collection]`` is trained; the other collections are passed unchanged.
    ``call(module, variables, input_ids, attention_mask)`` overrides the default
    ``module.apply(variables, input_ids, attention_mask)``."""
    if collection not in variables:
        raise ValueError(f"linen variables hold no {collection!r} collection: {list(variables)}")
    rest = {k: v for k, v in variables.items() if k != collection}
    params = jax.tree.map(jnp.copy, dict(variables[collection]))

    def to_variables(p):
        return {**rest, collection: p}

    def apply_fn(p, input_ids, attention_mask):
        v = to_variables(p)
        out = (
            call(module, v, input_ids, attention_mask)
            if call is not None
            else module.apply(v, input_ids, attention_mask)
        )
        return out.astype(jnp.float32)

    return apply_fn, params, to_variables
