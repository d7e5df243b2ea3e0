"""Runtime: executes a Plan with torch.distributed, one sub-package per concept.

Layers, lowest first; a module imports only from its own layer or a lower one (tests/test_imports.py
checks it), and from ``hdp.plan`` / ``hdp.data``, never from ``hdp.sim`` or the commands:

==============  ===============================================================================
``config``      ``TrainConfig``: what ``hdp train`` runs (one frozen dataclass, every layer reads it)
``parallel/``   process groups made once, devices, ring deadlines, peer failures, the same-plan check
``attention/``  the model's one attention call: token layout, exact local kernels, ``ring/`` variants
``model/``      the built-in decoder, the Hugging Face adapter and export, which model a run trains
``offload/``    selective activation offloading to pinned host memory
``pipeline/``   ``--pp``: the 1F1B schedule of a step's slots, stage-to-stage transfers, one stage's executor
``optim/``      dtypes per part (precision), the ZeRO-sharded AdamW, the learning-rate schedule
``checkpoint/`` DCP save/restore of a run, checkpoint directories on disk
``train/``      one rank's inputs for a step, the train step, the rank-independent run (plans, data)
``observe/``    metrics records, progress and summary, TensorBoard, memory figures
``launch/``     start and watch the ranks, what one rank does for a whole run, restarts, faults
``dryrun/``     ``hdp train --dry-run``: every rank's step in one process on a fake group, matched as NCCL would
==============  ===============================================================================

This package exports nothing itself, so ``import hdp.runtime`` pulls in no torch.
"""
