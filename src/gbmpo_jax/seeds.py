"""Named random streams of a run: every draw derives from ``run.seed`` and one of these.

Each purpose folds its own constant into ``jax.random.key(run.seed)`` (or offsets the numpy
seed), so adding a consumer never shifts another's draws and a resumed run repeats an
uninterrupted one. Rollout keys are ``fold_in(key(run.seed), step)`` (step >= 1), the update's
``fold_in(rollout_key, UPDATE)``; the data order is ``numpy.default_rng([run.seed, epoch])``.
The values are arbitrary but fixed: changing one changes every run's numbers.
"""

from __future__ import annotations

import jax

MODEL_INIT = 0x5EED  # weights of a `model.path=random` model (policy.load_model_and_tokenizer)
STATE_INIT = 0x10A  # the train state: fresh LoRA adapters (program.init_state)
EVAL_SUBSET = 7919  # numpy seed offset of the fixed held-out subset (episodes.TrainData)
UPDATE = 1  # folded into a step's rollout key for the update (stochastic objectives)


def key(seed: int, stream: int) -> jax.Array:
    """``fold_in(key(seed), stream)``: the key of one named stream of run ``seed``."""
    return jax.random.fold_in(jax.random.key(seed), stream)
