"""What a run writes in its directory: verified `checkpoint`s, the one-writer `lock`,
`metrics` (jsonl + TensorBoard, progress) and curve `plot`s."""
