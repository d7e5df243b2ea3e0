"""Router losses of a mixture-of-experts model, and the expert-load counts of the metrics.

Every term is a sum over tokens divided by a GLOBAL count (the batch's tokens N), as the train step's
cross-entropy is (``hdp.runtime.train.step``), so each rank's share is a local sum and the shares,
and their gradients, add up over ranks to the single-process value for any cut of the batch.

* ``document`` (default): the Switch/Mixtral balance loss per document d and MoE layer l,
  ``E * sum_i f[l,d,i] * P[l,d,i]``, with f = (tokens of d routed to expert i) / n_d (summing to k
  over i, transformers' scale: k at perfect balance) and P = mean router probability of i over d's
  tokens; averaged over layers, then over documents weighted by their tokens (n_d / N). Token
  weights give every token the same weight in the gradient, as the cross-entropy does; a mean over
  documents would weigh a 10-token document's tokens 10^5 times a 1M-token document's. For one
  document and one layer it is transformers' ``load_balancing_loss_func``.
  f is a count (not differentiated) and the loss is linear in P, so a document split over a ring
  needs only its members' counts combined: one exchange of the [layers, experts] counts per ring
  per micro-batch (``ring_counts``); each member's probability sums stay local.
* ``micro-batch``: transformers' ``load_balancing_loss_func`` over the micro-batch's tokens (all
  layers pooled), weighted by T_mb / N: it depends on how the batch is cut into micro-batches.
* z-loss (ST-MoE): ``logsumexp(router logits)^2`` per token and layer, averaged over layers, summed
  over tokens / N; per token, so independent of the cut.

Statistics are taken in float64 for a float64 model, else float32 (as the router's softmax).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from hdp.runtime.attention.layout import AttentionLayout
from hdp.runtime.attention.ring.flat import RingContext
from hdp.runtime.config import RouterSpec
from hdp.runtime.model.moe import Routing

TAG_ROUTER = 17
"""Tag of the ring's count exchange (the ring attention streams use 11-16)."""


def ring_counts(ring: RingContext, local: torch.Tensor) -> torch.Tensor:
    """The sum over the ring's members of each member's ``local`` int64 counts (every member gets it).

    One batch of point-to-point ops to every other member (global ranks, no process group of the
    ring), committed and waited at once. Deadlock-free without a barrier: it runs after the micro-
    batch's forward and before its loss, rings in ring-id order, and every member reaches this
    micro-batch's rings in the same global order (PLAN_FORMAT rule 5, docs/attention.md), exactly
    as each layer's ring attention does; it is one more such round. Integer counts: the sum is exact
    in any order.
    """
    slot, comm = ring.slot, ring.comm("router")
    received = []
    for member, peer in enumerate(slot.ranks):
        if member != slot.position:
            received.append(comm.exchange(local, peer, torch.empty_like(local), peer, tag=TAG_ROUTER))
    comm.commit()
    comm.wait()
    return local + torch.stack(received).sum(dim=0)


def _documents(layout: AttentionLayout, device: torch.device) -> tuple[torch.Tensor, list[int], list[int]]:
    """(row -> local document index [T], each document's whole length, the document of each ring slot).

    A ring this member holds no token of still gets a document (no rows): it must exchange its counts."""
    ids: dict[int, int] = {}
    lengths, sizes, order = [], [], []
    whole = {slot.seq: slot.seq_len for slot in layout.rings}
    for span in layout.spans:
        if span.seq not in ids:
            ids[span.seq] = len(ids)
            lengths.append(whole.get(span.seq, span.num_tokens))
        sizes.append(span.num_tokens)
        order.append(ids[span.seq])
    for slot in layout.rings:
        if slot.seq not in ids:
            ids[slot.seq] = len(ids)
            lengths.append(slot.seq_len)
    index = torch.repeat_interleave(torch.tensor(order, dtype=torch.int64), torch.tensor(sizes, dtype=torch.int64))
    return index.to(device), lengths, [ids[slot.seq] for slot in layout.rings]


class RouterLoss:
    """One rank's router losses for one step: the differentiable term of each micro-batch, and the
    step's detached sums (aux, z, expert load) that the optimizer's scalar all-reduce carries."""

    def __init__(self, spec: RouterSpec, num_experts: int, top_k: int) -> None:
        self.spec, self.num_experts, self.top_k = spec, num_experts, top_k
        self.total_tokens = 0
        self.aux = self.z = self.load = None  # type: Any

    def begin(self, total_tokens: int, num_layers: int, device: torch.device) -> None:
        """A new step of ``total_tokens`` tokens in the global batch: the sums start at zero."""
        self.total_tokens = total_tokens
        self.aux = torch.zeros((), dtype=torch.float64, device=device)
        self.z = torch.zeros((), dtype=torch.float64, device=device)
        self.load = torch.zeros(num_layers, self.num_experts, dtype=torch.int64, device=device)

    def term(self, routing: Sequence[Routing], layout: AttentionLayout, rings: Sequence[RingContext]
             ) -> torch.Tensor | None:
        """coef x aux + z_coef x z of one micro-batch (its share of the global mean), or None.

        Must be called by every micro-batch of a step (a ring's members exchange counts here)."""
        if not routing:
            return None
        assert self.load is not None, "begin() first"
        e = self.num_experts
        acc = torch.float64 if routing[0].logits.dtype == torch.float64 else torch.float32
        load = torch.stack([torch.bincount(r.experts.reshape(-1), minlength=e) for r in routing])  # [L, E]
        self.load += load
        parts = []
        if self.spec.z_loss_coef > 0:
            z = sum(torch.logsumexp(r.logits.to(acc), dim=-1).square().sum() for r in routing)
            z = z / (len(routing) * self.total_tokens)
            self.z += z.detach().double()
            parts.append(self.spec.z_loss_coef * z)
        aux = None
        if self.spec.aux_loss == "document":
            aux = self._document(routing, layout, rings, acc)
        elif self.spec.aux_loss == "micro-batch":
            aux = self._micro_batch(routing, load, acc)
        if aux is not None:
            self.aux += aux.detach().double()
            if self.spec.aux_loss_coef > 0:
                parts.append(self.spec.aux_loss_coef * aux)
        return sum(parts[1:], parts[0]) if parts else None

    def _document(self, routing: Sequence[Routing], layout: AttentionLayout, rings: Sequence[RingContext],
                  acc: torch.dtype) -> torch.Tensor:
        e, n = self.num_experts, len(routing)
        index, lengths, ring_docs = _documents(layout, routing[0].logits.device)
        docs = len(lengths)
        psum = torch.stack([torch.zeros(docs, e, dtype=acc, device=index.device)
                            .index_add(0, index, torch.softmax(r.logits.to(acc), dim=-1)) for r in routing])  # [L, D, E]
        counts = torch.stack([torch.bincount((index[:, None] * e + r.experts).reshape(-1), minlength=docs * e)
                              for r in routing]).view(n, docs, e)                                           # [L, D, E]
        for ring, d in zip(rings, ring_docs):  # ring-id order (layout.rings), on every member
            counts[:, d] = ring_counts(ring, counts[:, d].contiguous())
        n_d = torch.tensor(lengths, dtype=acc, device=index.device)
        return (counts.to(acc) * psum / n_d[None, :, None]).sum() * (e / (n * self.total_tokens))

    def _micro_batch(self, routing: Sequence[Routing], load: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
        e, n, t = self.num_experts, len(routing), routing[0].logits.shape[0]
        if t == 0:
            return routing[0].logits.sum().to(acc) * 0
        psum = sum(torch.softmax(r.logits.to(acc), dim=-1).sum(dim=0) for r in routing)              # [E]
        rows = n * t
        loss = e * (load.sum(dim=0).to(acc) / rows * (psum / rows)).sum()  # load_balancing_loss_func
        return loss * (t / self.total_tokens)

    def scalars(self) -> list[torch.Tensor]:
        """What the optimizer's scalar all-reduce sums over ranks: aux, z, then the load [L x E]."""
        assert self.load is not None, "begin() first"
        return [self.aux, self.z, *self.load.double().reshape(-1).unbind()]

    def metrics(self, summed: Sequence[float]) -> dict[str, float | int | None]:
        """The step's record fields from ``scalars()`` summed over ranks.

        ``expert_load_max_over_mean``: per layer, the most routed copies any expert got over the mean
        per expert (1.0 = perfectly even), the worst layer's. ``dropped_tokens``: routed copies not
        computed (dropless: 0; the global load's total against top_k x tokens x layers).
        """
        aux, z, *flat = summed
        load = torch.tensor(flat, dtype=torch.float64).view(-1, self.num_experts)                  # [L, E]
        record: dict[str, float | int | None] = {}
        if self.spec.aux_loss != "none":  # null, not NaN, on a non-finite step: strict JSON
            record["aux_loss"] = aux if math.isfinite(aux) else None
        if self.spec.z_loss_coef > 0:
            record["z_loss"] = z if math.isfinite(z) else None
        mean = load.mean(dim=1).clamp(min=1e-300)
        record["expert_load_max_over_mean"] = float((load.max(dim=1).values / mean).max())
        record["dropped_tokens"] = int(round(self.top_k * self.total_tokens * load.shape[0] - float(load.sum())))
        return record


def router_loss(model: Any, total_tokens: int, device: torch.device) -> RouterLoss | None:
    """The model's router losses, begun for a step of ``total_tokens`` tokens; None for a dense model
    or one built without a ``router_spec`` (``hdp.runtime.model.source.build_train_model`` sets it)."""
    spec: RouterSpec | None = getattr(model, "router_spec", None)
    if spec is None or not model.cfg.is_moe:
        return None
    cfg = model.cfg
    loss: RouterLoss | None = getattr(model, "_router_loss", None)
    if loss is None or loss.spec != spec:
        loss = RouterLoss(spec, cfg.num_experts, cfg.top_k)
        object.__setattr__(model, "_router_loss", loss)  # plain attribute, not a submodule
    loss.begin(total_tokens, cfg.num_layers, device)
    return loss
