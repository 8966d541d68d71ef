"""Evolution strategies over the neural mirror map: pure ask / tell `strategies` (evosax's
OpenES / SNES / CMA-ES and the paper's ES), the `population` of inner GRPO runs (the step
program vmapped over members) and the curves and maps an ES run writes (`report`)."""
