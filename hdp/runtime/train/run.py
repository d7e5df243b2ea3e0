"""The rank-independent parts of a run: data stream, cost model, each step's plan, the default
capacity and the checks that run before any process starts (the launcher and every rank build the
same ``Run`` from the config alone)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from hdp.data.batches import BatchStream
from hdp.data.load import TrainingData, load_training_data
from hdp.data.tokenizer import check_vocab
from hdp.plan import build_cost_model, get_strategy, make_plan
from hdp.plan.cost.cost_model import CostModel
from hdp.plan.schedule.sharding import num_offload_layers
from hdp.plan.cost.topology import Topology
from hdp.plan.types import Plan
from hdp.plan.zigzag import max_member_tokens, ranks_needed
from hdp.runtime.config import TrainConfig
from hdp.runtime.model.source import model_shape
from hdp.runtime.pipeline.checks import check_pp_run
from hdp.runtime.attention.ring.select import with_ring_algo
from hdp.runtime.train.limits import (RankMemory, accelerator_memory, check_batch, check_extras, check_memory,
                                     host_memory)

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Run:
    """The rank-independent parts of a run: data stream and cost model."""

    config: TrainConfig
    stream: BatchStream
    cost: CostModel
    data: TrainingData | None = None

    @classmethod
    def from_config(cls, config: TrainConfig, num_ranks: int | None = None) -> "Run":
        """``capacity=None`` in ``config`` is derived for ``num_ranks`` (``default_capacity``).

        ``num_ranks`` here and in every method is the plan's: *HDP* ranks, processes / (tp x pp)."""
        check_extras(config)
        cfg = model_shape(config)
        check_pp_run(config, cfg)
        data = load_training_data(config.data, config.tokenizer, config.text_field)
        check_vocab(data.tokenizer, data.vocab_size, cfg.vocab_size, config.hf_model or config.model)
        stream = BatchStream(data.corpus, config.global_batch_tokens, config.max_seq_len, config.seed)
        cost = build_cost_model(cfg, config.profile, tp=config.tp, pp=config.pp, recompute=config.recompute,
                                dtype=config.dtype)
        run = cls(config, stream, cost, data)
        if config.capacity is None:
            if num_ranks is None:
                raise ValueError("capacity is None: pass num_ranks to derive it")
            run = replace(run, config=replace(config, capacity=run.default_capacity(num_ranks)))
        return run

    @property
    def longest(self) -> int:
        """The longest sequence a step can hold: documents are cut at max_seq_len, batches at their size."""
        c = self.config
        return min(c.max_seq_len, c.global_batch_tokens, max(self.stream.corpus.doc_lengths))

    def _make_plan(self, lengths: list[int], num_ranks: int, capacity: int) -> Plan:
        """With --gpus-per-node the planner places rings by node for --ring-algo (default two-level,
        the best measured, as in ``hdp plan``) and sees their transfers (``hdp.plan.cost.topology``);
        without it, one node's worth of flat rings as before."""
        c = self.config
        topology = None
        if c.gpus_per_node is not None:
            topology = Topology(c.gpus_per_node, c.ring_algo or "two-level", kv_heads=self.cost.model.num_kv_heads)
        return make_plan(lengths, num_ranks, capacity, self.cost, get_strategy(c.strategy, offload=c.offload),
                         max_len=c.max_seq_len, seed=c.seed, topology=topology)

    def plan(self, step: int, num_ranks: int) -> Plan:
        """The plan of ``step`` for ``num_ranks`` ranks (pure: same on every rank), with --ring-algo applied."""
        assert self.config.capacity is not None
        plan = self._make_plan(self.stream.batch(step).lengths, num_ranks, self.config.capacity)
        if self.config.ring_algo is None and self.config.gpus_per_node is None:
            return plan  # the planner's rings, algorithms and topology as given
        return with_ring_algo(plan, self.config.ring_algo, self.gpus_per_node(plan, num_ranks),
                              self.cost.model.num_kv_heads)

    def gpus_per_node(self, plan: Plan, num_ranks: int) -> int:
        """--gpus-per-node, else the plan's, else LOCAL_WORLD_SIZE (torchrun), else one node of num_ranks."""
        if self.config.gpus_per_node is not None:
            return self.config.gpus_per_node
        if plan.gpus_per_node > 0:
            return plan.gpus_per_node
        return int(os.environ.get("LOCAL_WORLD_SIZE", num_ranks))

    def default_capacity(self, num_ranks: int) -> int:
        """The smallest capacity at which the strategy can plan the longest sequence on num_ranks ranks:
        the largest zig-zag member of it split m ways, for m = num_ranks, num_ranks - 1, ...; m = 1
        (whole, on one rank) always works, so the default run works on any number of ranks."""
        for m in range(num_ranks, 1, -1):
            capacity = max_member_tokens(self.longest, m)
            try:
                self._make_plan([self.longest], num_ranks, capacity)
                return capacity
            except ValueError:
                continue
        return self.longest

    def ranks_per_node(self, num_ranks: int) -> int:
        """--gpus-per-node, else LOCAL_WORLD_SIZE (torchrun's ranks on this node), else all ranks on one node."""
        if self.config.gpus_per_node is not None:
            return self.config.gpus_per_node
        return int(os.environ.get("LOCAL_WORLD_SIZE", num_ranks))

    def check_feasible(self, num_ranks: int, device: "torch.device | None" = None) -> None:
        """Fail before starting processes if the longest allowed sequence cannot be held by the cluster.

        Memory is checked against the device that will run it, not the cost model's profile (a CPU box
        is not an H100): ``device`` None or CPU, this machine's host RAM shared by its CPU ranks; an
        accelerator, its free memory (each rank checks its own; the launcher passes ``"accelerator"``
        to leave it to them)."""
        c = self.config
        assert c.capacity is not None
        cost = dataclasses.replace(self.cost, zero=c.zero_for(num_ranks))
        processes = num_ranks * c.tp * c.pp  # this machine's processes share its RAM
        host = host_memory(min(processes, self.ranks_per_node(processes)))
        memory: RankMemory | None = host
        if device is not None and getattr(device, "type", None) != "cpu":
            memory = None if device == "accelerator" else accelerator_memory(device)
        pieces = sum(-(-n // c.max_seq_len) for n in self.stream.corpus.doc_lengths)
        check_batch(c.global_batch_tokens, pieces, self.stream.tokens_per_epoch, host)
        if memory is not None:
            check_memory(cost, c.capacity, num_ranks, memory, c.hf_model or c.model)
        what = (f"the longest sequence of a step ({self.longest:,} tokens: documents are cut at max_seq_len "
                f"{c.max_seq_len:,})")
        needed = ranks_needed(self.longest, c.capacity)
        if needed > num_ranks:
            raise ValueError(f"{what} needs {needed:,} ranks at capacity {c.capacity:,} but only {num_ranks:,} "
                             "exist: raise the number of ranks or the capacity, or lower max_seq_len")
        try:  # what else a strategy may need (static: a divisor of the rank count that holds it)
            self._make_plan([self.longest], num_ranks, c.capacity)
        except ValueError as e:
            raise ValueError(f"{what} cannot be planned on {num_ranks:,} ranks at capacity {c.capacity:,} "
                             f"with strategy {c.strategy}: {e}") from None

    def offload_layers(self) -> int | None:
        """Layers every micro-batch offloads under the ``offload_ratio`` override (None: as planned)."""
        c = self.config
        if c.offload_ratio is None:
            return None
        layers = num_offload_layers(c.offload_ratio, self.cost.layers)
        if layers == 0 and c.offload_ratio > 0:
            raise ValueError(f"offload_ratio {c.offload_ratio:g} offloads no layer of model {c.model}: of its "
                             f"{self.cost.layers} layers the first and last always stay on the device, so "
                             f"{max(self.cost.layers - 2, 0)} can offload; use a model with more layers or a "
                             "larger ratio")
        return layers
