"""Pipeline parallelism (``--pp``): hdp's own 1F1B executor over micro-batches of different lengths and counts.

A runtime layer above ``offload`` and below ``optim``: it may import ``config``, ``parallel``,
``attention``, ``model`` and ``offload`` (and ``hdp.plan``), never ``train`` (the train step passes
its inputs and loss in). ``schedule`` is pure Python; ``p2p`` moves activations between a
pipeline's stages; ``executor`` runs one step's forwards and backwards on one stage. The deadlock-
freedom argument is in docs/pipeline.md.
"""
