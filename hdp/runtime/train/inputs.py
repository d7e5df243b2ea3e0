"""One rank's share of a global batch as tensors: token ids, global positions and labels per micro-batch.

A rank reads only the token ranges of its own segments (plus one token after each, for the label).
Labels come from the global sequence, so a ring piece's last token is labelled by the first token of
the next piece, wherever that piece lives; a sequence's last token has no label (``IGNORE``).
Each micro-batch's attention metadata is built here, once, with its layout (``MicroBatchAttention``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hdp.data.batches import GlobalBatch
from hdp.plan.types import Plan
from hdp.runtime.attention.dispatch import MicroBatchAttention
from hdp.runtime.attention.layout import build_layout

IGNORE = -100
"""Label of a token with no next token (``cross_entropy``'s ignore_index)."""


@dataclass(frozen=True)
class MicroBatchInputs:
    """Packed buffer of one micro-batch: tokens/positions/labels int64 [T], its attention metadata, and how
    many layers the plan offloads (``MicroBatch.offload_layers``)."""

    tokens: torch.Tensor
    positions: torch.Tensor
    labels: torch.Tensor
    attention: MicroBatchAttention
    offload_layers: int

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])


def num_labelled_tokens(plan: Plan) -> int:
    """Tokens with a label in the whole global batch: every token but each sequence's last."""
    return sum(s.length - 1 for s in plan.sequences)


def check_batch_matches_plan(plan: Plan, batch: GlobalBatch) -> None:
    lengths = batch.lengths
    if [s.length for s in plan.sequences] != lengths:
        raise ValueError(
            f"the plan is for {len(plan.sequences)} sequences of {plan.total_tokens} tokens, the batch has "
            f"{len(lengths)} of {sum(lengths)}: plan and data disagree"
        )


def rank_inputs(plan: Plan, batch: GlobalBatch, rank: int, device: torch.device, *,
                timeout_s: float | None = 60.0) -> list[MicroBatchInputs]:
    """Inputs of ``rank``'s micro-batches, in plan order (possibly none); ring transfers wait ``timeout_s``."""
    out = []
    for mb_index, mb in enumerate(plan.ranks[rank].micro_batches):
        layout = build_layout(plan, rank, mb_index)
        tokens: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for seg in mb.segments:
            length = plan.sequences[seg.seq].length
            data = batch.read(seg.seq, seg.start, min(seg.end + 1, length))
            tokens.extend(data[: seg.num_tokens])
            labels.extend(data[1:])
            if seg.end == length:
                labels.append(IGNORE)
            positions.extend(range(seg.start, seg.end))
        assert len(tokens) == len(labels) == len(positions) == layout.num_tokens
        out.append(MicroBatchInputs(
            tokens=torch.tensor(tokens, dtype=torch.int64, device=device),
            positions=torch.tensor(positions, dtype=torch.int64, device=device),
            labels=torch.tensor(labels, dtype=torch.int64, device=device),
            attention=MicroBatchAttention(layout, timeout_s=timeout_s),
            offload_layers=mb.offload_layers,
        ))
    return out
