"""Ring attention calls as recorded phases, and templates so that a repeated ring shape runs once.

Every ring call of the runtime (``dispatch.RING_ATTENTION``: flat, two-level, bidirectional) goes
through ``RingPhase``, which runs the real autograd function (forward, and its backward when
autograd reaches it) while the recorder notes its transfers under "ring r forward/backward".

Exact mode records every call's ops in the rank's own list. Template mode (large worlds) uses
the fact that a member's ops depend only on the ring's *shape*: algorithm, size, its position,
the two-level node grid, which members hold no token, head counts and dtypes (``Shape``). The
first call of a shape runs for real and is recorded symbolically (peer as ring position, size as
"member j's tokens x elements per token", read off the ``RingContext.block`` buffer the op moves);
later calls of the same shape skip the compute and transfers and leave one ``phase`` op in the
rank's list, which the matcher treats as a meeting of the ring's members (``match``). A shape
whose ops cannot be read symbolically (a transfer of a tensor that is not a ring block) stays
exact. ``tests/runtime/test_dry_run.py`` checks that both modes give the same traffic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from hdp.runtime.attention import dispatch
from hdp.runtime.attention.ring.flat import RingContext
from hdp.runtime.dryrun.record import P2P_KINDS, Op, Recorder


@dataclass(frozen=True, slots=True)
class Shape:
    """What a ring member's op sequence depends on (nothing about token counts but which are zero)."""

    algo: str
    size: int
    grid: tuple[tuple[int, ...], ...] | None
    empty: tuple[bool, ...]
    q_heads: tuple[int, ...]
    kv_heads: tuple[int, ...]
    dtype: str


@dataclass(slots=True)
class TemplateOp:
    """One op of a template: peer as a ring position, size as ``tokens[member] * per_token``."""

    kind: str
    peer: int
    member: int
    per_token: int
    dtype: str
    tag: int
    ref: int
    group: tuple[int, ...] | None


@dataclass
class Templates:
    """Recorded templates by (shape, position, direction); shapes that must stay exact."""

    ops: dict[tuple[Shape, int, str], list[TemplateOp]] = field(default_factory=dict)
    exact: set[Shape] = field(default_factory=set)
    buffer_bytes_per_token: dict[tuple[Shape, int], float] = field(default_factory=dict)
    """Transfer-buffer bytes of a member per token of the ring's largest member (blocks are sized by it)."""

    def family(self, shape: Shape) -> dict[tuple[int, str], list[TemplateOp]] | None:
        """All members' templates of ``shape`` (None until every position has both directions)."""
        out = {}
        for pos in range(shape.size):
            for direction in ("forward", "backward"):
                ops = self.ops.get((shape, pos, direction))
                if ops is None:
                    return None
                out[(pos, direction)] = ops
        return out


def ring_shape(ring: RingContext, algo: str, q: torch.Tensor, k: torch.Tensor) -> Shape:
    slot = ring.slot
    return Shape(algo, slot.size, ring.grid if algo == "two-level" else None,
                 tuple(n == 0 for n in ring.member_tokens), tuple(q.shape[1:]), tuple(k.shape[1:]),
                 str(q.dtype).removeprefix("torch."))


class RingRecorder:
    """Installs ``RingPhase`` around every ring algorithm and the block tagging templates read sizes from."""

    def __init__(self, recorder: Recorder, templated: bool) -> None:
        self.recorder, self.templated = recorder, templated
        self.templates = Templates()
        self._owners: dict[int, tuple[int, torch.Tensor]] = {}
        self._saved: dict[str, Callable] = {}
        self._saved_block: Callable | None = None
        self.buffer_bytes: dict[tuple[int, int, int], int] = {}
        """(rank, micro-batch, ring id) -> bytes of the ring's transfer buffers on that rank."""

    def __enter__(self) -> "RingRecorder":
        self._saved = dict(dispatch.RING_ATTENTION)
        for algo, fn in self._saved.items():
            dispatch.RING_ATTENTION[algo] = self._phased(algo, fn)
        self._saved_block = RingContext.block
        owners, real_block = self._owners, RingContext.block

        def block(ring: RingContext, role: str, member: int, like: torch.Tensor, dtype: Any = None) -> torch.Tensor:
            t = real_block(ring, role, member, like, dtype)
            owners[id(t)] = (member, t)  # the tensor is kept so that its id is not reused meanwhile
            return t

        RingContext.block = block  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        dispatch.RING_ATTENTION.update(self._saved)
        if self._saved_block is not None:
            RingContext.block = self._saved_block  # type: ignore[method-assign]

    def _phased(self, algo: str, fn: Callable) -> Callable:
        def call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ring: RingContext, scale: float | None = None,
                 *args: Any) -> torch.Tensor:
            return RingPhase.apply(q, k, v, ring, scale, algo, lambda *a: fn(*a, *args), self)
        return call

    # -- one direction of one call ------------------------------------------------------------------
    def wants_real(self, shape: Shape, position: int, direction: str) -> bool:
        return (not self.templated or shape in self.templates.exact
                or (shape, position, direction) not in self.templates.ops)

    def run(self, ring: RingContext, shape: Shape, direction: str, body: Callable[[], Any]) -> Any:
        """Run ``body`` (the real call) recording its ops: inline (exact) or as the shape's template."""
        rec, slot = self.recorder, ring.slot
        where = f"ring {slot.ring_id} {direction} (micro-batch {ring.mb_index})"
        record_template = self.templated and shape not in self.templates.exact
        sink: list[Op] = []
        rec.where, rec.sink = where, sink if record_template else None
        self._owners.clear()
        try:
            out = body()
        finally:
            rec.where, rec.sink = "", None
        nbytes = sum(b.numel() * b.element_size() for b in ring._buffers.values())
        self._note_buffers(ring, shape, nbytes / max(max(ring.member_tokens), 1))
        if record_template:
            template = self._symbolic(sink, ring)
            if template is None:  # not readable symbolically: this shape runs for real from now on
                self.templates.exact.add(shape)
                for op in sink:
                    rec.append(op)
            else:
                self.templates.ops[(shape, slot.position, direction)] = template
                self.phase(ring, shape, direction)
        self._owners.clear()
        return out

    def _note_buffers(self, ring: RingContext, shape: Shape, per_token: float) -> None:
        key = (shape, ring.slot.position)
        per_token = max(per_token, self.templates.buffer_bytes_per_token.get(key, 0.0))
        self.templates.buffer_bytes_per_token[key] = per_token
        where = (ring.slot.rank, ring.mb_index, ring.slot.ring_id)
        self.buffer_bytes[where] = max(self.buffer_bytes.get(where, 0), round(per_token * max(ring.member_tokens)))

    def phase(self, ring: RingContext, shape: Shape, direction: str) -> None:
        slot = ring.slot
        self._note_buffers(ring, shape, self.templates.buffer_bytes_per_token.get((shape, slot.position), 0.0))
        self.recorder.append(Op("phase", group=slot.ranks, key=(shape, slot.position, direction, ring.member_tokens),
                                where=f"ring {slot.ring_id} {direction} (micro-batch {ring.mb_index})"))

    def _symbolic(self, ops: list[Op], ring: RingContext) -> list[TemplateOp] | None:
        ranks, out = ring.slot.ranks, []
        for op in ops:
            if op.kind in P2P_KINDS:
                owner = self._owners.get(op.key)
                if owner is None or op.peer not in ranks:
                    return None
                member, tokens = owner[0], ring.member_tokens[owner[0]]
                out.append(TemplateOp(op.kind, ranks.index(op.peer), member, op.numel // tokens, op.dtype, op.tag,
                                      -1, op.group))
            elif op.kind == "wait":
                out.append(TemplateOp("wait", -1, -1, 0, "", 0, op.ref, None))
            else:  # a collective inside a ring call: not a ring-local protocol
                return None
        return out


def instantiate(template: list[TemplateOp], ranks: tuple[int, ...], tokens: tuple[int, ...]) -> list[Op]:
    """A template's ops for one ring instance: global peers and real sizes."""
    return [Op(t.kind, peer=ranks[t.peer] if t.peer >= 0 else -1, group=t.group,
               numel=tokens[t.member] * t.per_token if t.member >= 0 else 0, dtype=t.dtype, tag=t.tag, ref=t.ref)
            for t in template]


class RingPhase(torch.autograd.Function):
    """A ring call and its backward, each recorded as one phase (or replayed from its template)."""

    @staticmethod
    def forward(ctx, q, k, v, ring: RingContext, scale, algo: str, fn: Callable, rr: RingRecorder):  # type: ignore[override]
        shape, position = ring_shape(ring, algo, q, k), ring.slot.position
        ctx.ring, ctx.shape, ctx.rr, ctx.inner = ring, shape, rr, None
        ctx.shapes = (q.shape, k.shape, v.shape)
        real_forward, real_backward = rr.wants_real(shape, position, "forward"), rr.wants_real(shape, position, "backward")
        if not real_forward:
            rr.phase(ring, shape, "forward")
            if not real_backward:
                return q.new_empty(q.shape)
        with torch.enable_grad():
            inner = tuple(x.detach().requires_grad_() for x in (q, k, v))
            if real_forward:
                out = rr.run(ring, shape, "forward", lambda: fn(*inner, ring, scale))
            else:  # forward templated, backward not yet: run the forward again without recording it
                sink, rr.recorder.sink = rr.recorder.sink, []
                try:
                    out = fn(*inner, ring, scale)
                finally:
                    rr.recorder.sink = sink
        ctx.inner = (inner, out)
        return out.detach()

    @staticmethod
    def backward(ctx, dout):  # type: ignore[override]
        ring, shape, rr = ctx.ring, ctx.shape, ctx.rr
        if ctx.inner is None or not rr.wants_real(shape, ring.slot.position, "backward"):
            rr.phase(ring, shape, "backward")
            return (*(dout.new_empty(s) for s in ctx.shapes), None, None, None, None, None)
        inner, out = ctx.inner
        rr.run(ring, shape, "backward", lambda: torch.autograd.backward(out, dout))
        return (*(x.grad for x in inner), None, None, None, None, None)
