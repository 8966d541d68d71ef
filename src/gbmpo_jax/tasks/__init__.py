"""Tasks and rewards (the host side): datasets and splits (`data`, `arithmetic`, the offline
`bundled_data`), chat prompts (`prompts`), verifiable `rewards` (math answers, sandboxed
code), text <-> token glue for training (`episodes`) and held-out `evaluation`."""
