"""One optimizer step and what feeds it: a rank's tensors for a step (``inputs``), the step itself
(``step``: forward/backward per micro-batch, gradient reduction, AdamW), and the rank-independent
run (``run``: data stream, cost model, each step's plan), which the launcher and every rank build.

May import: ``hdp.plan``, ``hdp.data``, every runtime layer below (config, parallel, attention,
model, offload, optim, checkpoint), torch.
"""
