"""The RL objective and the step (pure, jitted): group-relative `advantages`, Bregman
`divergences` (KL k3, ProbL2, the neural mirror map), the clipped surrogate `losses`,
chunked `logprobs`, `lora` adapters, the `optim`izer, the update (`train_step`), where arrays
live on a mesh (`placement`) and the one step program of training and ES (`program`)."""
