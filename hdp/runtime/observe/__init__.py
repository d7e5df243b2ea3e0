"""What a run reports: each step's metrics record and rank 0's progress bar, metrics JSONL and
summary (``report``), TensorBoard scalars (``tensorboard``), memory figures (``memory_stats``).

May import: ``hdp.plan``, ``hdp.data``, every runtime layer below, torch.
"""
