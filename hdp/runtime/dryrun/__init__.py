"""``hdp train --dry-run``: every rank's real step control flow in one process, checked as NCCL would run it.

One rank at a time joins torch's fake process group (no communication, any world size), runs the
real ``train_step`` (plan check, inputs, ring attention forward and backward, the optimizer's
collectives) on meta tensors, and a recorder around ``torch.distributed`` writes down every
collective and point-to-point operation. The matcher then replays all ranks together with NCCL's
rules (FIFO per pair, same collectives in the same order, progress until the step completes).

Modules: ``record`` (the recorder, host-sync counter), ``rings`` (ring calls as phases, templates
for repeated ring shapes), ``skeleton`` (the model reduced to what communicates), ``match`` (the
matcher, pure Python), ``drive`` (one step of every rank), ``report`` (per-rank figures, table),
``command`` (the command: plan, record, match, report, exit code).
docs/dry-run.md says what is simulated and why.
"""
