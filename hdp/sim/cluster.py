"""The virtual cluster a plan runs on: GPUs, how HDP ranks map onto them, and link speeds.

HDP rank ``r`` is a TP group (x a pipeline when ``pp > 1``) and occupies GPUs
``r*tp*pp ... (r+1)*tp*pp - 1``; stage ``s`` of it uses GPUs ``r*tp*pp + s*tp ...``. Node = gpu //
gpus_per_node. Two GPUs on one node talk over NVLink, otherwise over the GPU's own NIC.

Default link figures (per GPU, per direction), rounded public numbers, not measurements:

* NVLink: 450 GB/s. An H100 SXM has 18 NVLink4 links, 900 GB/s bidirectional in total (NVIDIA
  H100 Tensor Core GPU datasheet), i.e. 450 GB/s each way.
* Inter-node: 50 GB/s. A DGX H100 / HGX H100 node has one 400 Gb/s ConnectX-7 NIC per GPU
  (NVIDIA DGX H100 user guide); 400 Gb/s = 50 GB/s.
* Latencies: ~2 us over NVLink and ~5 us over InfiniBand for a small NCCL point-to-point message
  (order of magnitude of nccl-tests' small-message times); they only matter for tiny transfers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hdp.plan.planner import MAX_RANKS
from hdp.plan.schedule.sharding import PlanError

if TYPE_CHECKING:
    from hdp.plan.cost.topology import Topology

NVLINK_GBPS = 450.0
INTER_GBPS = 50.0
NVLINK_LATENCY_US = 2.0
INTER_LATENCY_US = 5.0


@dataclass(frozen=True, slots=True)
class Cluster:
    gpus: int
    """GPUs in the job."""
    tp: int = 1
    """Tensor-parallel size of one HDP rank."""
    pp: int = 1
    """Pipeline stages of one HDP rank."""
    gpus_per_node: int = 8
    nvlink_gbps: float = NVLINK_GBPS
    """NVLink bandwidth per GPU per direction, GB/s."""
    inter_gbps: float = INTER_GBPS
    """Inter-node bandwidth per GPU per direction, GB/s."""
    nvlink_latency_s: float = NVLINK_LATENCY_US * 1e-6
    inter_latency_s: float = INTER_LATENCY_US * 1e-6

    def __post_init__(self) -> None:
        """Errors name the fields in braces (``hdp.plan.PlanError``); ``hdp simulate`` spells them as flags."""
        for name in ("gpus", "tp", "pp", "gpus_per_node"):
            if getattr(self, name) < 1:
                raise PlanError(f"{{{name}}} must be >= 1, got {getattr(self, name)}")
        if self.num_ranks > MAX_RANKS:
            raise PlanError(f"{{gpus}} {self.gpus:,} make {self.num_ranks:,} HDP ranks, more than the planner "
                            f"takes ({MAX_RANKS:,}): use fewer GPUs or a larger {{tp}} x {{pp}}")
        if self.gpus % (self.tp * self.pp):
            raise PlanError(
                f"{{gpus}} {self.gpus} is not divisible by {{tp}} x {{pp}} = {self.tp * self.pp}: "
                "every HDP rank needs tp*pp GPUs")
        for name in ("nvlink_gbps", "inter_gbps"):
            if getattr(self, name) <= 0:
                raise PlanError(f"{{{name}}} must be > 0, got {getattr(self, name)}")
        for name in ("nvlink_latency_s", "inter_latency_s"):
            if getattr(self, name) < 0:
                raise PlanError(f"{{{name}}} must be >= 0")

    @property
    def num_ranks(self) -> int:
        """HDP ranks: gpus / (tp * pp)."""
        return self.gpus // (self.tp * self.pp)

    @property
    def gpus_per_rank(self) -> int:
        return self.tp * self.pp

    def node(self, rank: int, stage: int = 0) -> int:
        return (rank * self.tp * self.pp + stage * self.tp) // self.gpus_per_node

    def ring_link(self, members: tuple[int, ...]) -> tuple[float, float]:
        """The slowest neighbour link of a ring: every block step waits for it."""
        first = self.node(members[0])
        if self.gpus_per_rank <= self.gpus_per_node and all(self.node(m) == first for m in members):
            return self.nvlink_gbps * 1e9, self.nvlink_latency_s
        return self.inter_gbps * 1e9, self.inter_latency_s

    def topology(self, ring_algo: str = "flat", kv_heads: int = 8) -> "Topology":
        """What the planner should know of this cluster: HDP ranks per node (at least 1: a rank
        wider than a node has every ring hop between nodes), the ring algorithm, the links."""
        from hdp.plan.cost.topology import Topology

        return Topology(max(1, self.gpus_per_node // self.gpus_per_rank), ring_algo, self.nvlink_gbps,
                        self.inter_gbps, self.nvlink_latency_s, self.inter_latency_s, kv_heads)

    # -- collectives -----------------------------------------------------------------------------------
    def tp_all_reduce(self, num_bytes: float) -> float:
        """Ring all-reduce of ``num_bytes`` over the tp GPUs of one stage."""
        if self.tp == 1:
            return 0.0
        intra = self.tp <= self.gpus_per_node
        bw = (self.nvlink_gbps if intra else self.inter_gbps) * 1e9
        lat = self.nvlink_latency_s if intra else self.inter_latency_s
        return 2 * (self.tp - 1) / self.tp * num_bytes / bw + 2 * (self.tp - 1) * lat

    def dp_all_reduce(self, num_bytes: float) -> float:
        """Gradient all-reduce over the HDP ranks: each GPU reduces its shard with its peers.

        Bandwidth term of a ring (2(n-1)/n * bytes / bw); latency of a tree (2 log2 n hops), as
        NCCL picks trees for large n.
        """
        n = self.num_ranks
        if n == 1:
            return 0.0
        intra = self.gpus <= self.gpus_per_node
        bw = (self.nvlink_gbps if intra else self.inter_gbps) * 1e9
        lat = self.nvlink_latency_s if intra else self.inter_latency_s
        return 2 * (n - 1) / n * num_bytes / bw + 2 * math.ceil(math.log2(n)) * lat

    def p2p(self, num_bytes: float, rank: int, stage: int) -> float:
        """Send activations from ``stage`` to ``stage + 1`` of one pipeline."""
        same = self.node(rank, stage) == self.node(rank, stage + 1) and self.tp <= self.gpus_per_node
        bw = (self.nvlink_gbps if same else self.inter_gbps) * 1e9
        lat = self.nvlink_latency_s if same else self.inter_latency_s
        return num_bytes / bw + lat
