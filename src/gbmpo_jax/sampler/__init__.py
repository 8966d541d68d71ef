"""The sampler: batched KV-cache decoding with a shared-prefix prefill (`sampling`) and the
logit processors of transformers' semantics (`logit_processors`). Depends on `models` only."""
