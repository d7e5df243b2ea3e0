"""Per-rank figures of a recorded step: memory by the planner's formula, peers, host syncs, bytes per link.

* ``peak_memory_bytes``: model states during backward (``CostModel.model_state_bytes``, the formula
  the runtime's flat buffers follow exactly) + activations of the rank's largest micro-batch
  (``activation_bytes_per_token`` x tokens, less the layers the plan offloads) + the ring transfer
  buffers that micro-batch allocated (``RingContext.block``, measured while recording).
* ``peers``: distinct ranks this rank sends to or receives from in the step (NCCL connects each pair
  once and keeps per-peer buffers the allocator does not see).
* ``host_syncs``: device-to-host reads during the step (``record.HostSyncs``).
* ``nvlink_bytes`` / ``nic_bytes``: bytes this rank sends to a rank on its own node / another node
  (rank r is on node r // gpus_per_node), all layers (ring traffic of the layers not run is theirs
  repeated); ``collective_bytes``: its input to the step's collectives.
"""

from __future__ import annotations

from typing import Any

from hdp.plan.cost.cost_model import CostModel
from hdp.runtime.dryrun.drive import Recorded
from hdp.runtime.dryrun.rings import Templates

DTYPE_BYTES = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2, "int64": 8, "int32": 4, "bool": 1}
HBM_BYTES = 80 * 10**9
"""What the worst rank is compared with: an 80 GB device (H100/A100 80GB)."""


def rank_figures(rec: Recorded, cost: CostModel, gpus_per_node: int, num_layers: int) -> list[dict[str, Any]]:
    plan, scale = rec.plan, num_layers / max(rec.layers_run, 1)
    states = cost.model_state_bytes(plan.num_ranks)
    act_per_token = cost.activation_bytes_per_token()
    buffers_of: dict[tuple[int, int], int] = {}  # (rank, micro-batch) -> its rings' buffer bytes
    for (r, i, _), b in rec.ring_buffers.items():
        buffers_of[(r, i)] = buffers_of.get((r, i), 0) + b
    summaries: dict[tuple, tuple[set[int], dict[tuple[int, int], int], int]] = {}
    out = []
    for rank, ops in enumerate(rec.ops):
        peers: set[int] = set()
        # Bytes as integers, ring traffic (scaled to every layer at the end) apart from the rest.
        ring = {"nvlink": 0, "nic": 0}
        other = {"nvlink": 0, "nic": 0}
        ring_sends = other_sends = 0
        collective = 0
        node = rank // gpus_per_node
        for op in ops:
            if op.kind in ("send", "recv"):
                peers.add(op.peer)
                if op.kind == "send":
                    in_ring = op.where.startswith("ring")
                    (ring if in_ring else other)["nvlink" if op.peer // gpus_per_node == node else "nic"] += (
                        op.numel * DTYPE_BYTES.get(op.dtype, 4))
                    ring_sends += in_ring
                    other_sends += not in_ring
            elif op.kind == "phase":
                s, position, direction, tokens = op.key
                positions, sent, count = _summary(summaries, rec.templates, (s, position, direction))
                peers.update(op.group[p] for p in positions)
                for (p, member), per_token in sent.items():
                    ring["nvlink" if op.group[p] // gpus_per_node == node else "nic"] += tokens[member] * per_token
                ring_sends += count
            elif op.kind != "wait":
                collective += op.numel * DTYPE_BYTES.get(op.dtype, 4)
        link = {k: ring[k] * scale + other[k] for k in ring}
        sends = ring_sends * scale + other_sends
        micro = plan.ranks[rank].micro_batches
        peak_mb = 0.0
        for m, mb in enumerate(micro):
            on_device = 1.0 - mb.offload_layers / max(num_layers, 1)
            acts = mb.num_tokens * act_per_token * on_device
            buffers = buffers_of.get((rank, m), 0)
            peak_mb = max(peak_mb, acts + buffers)
        out.append({"rank": rank, "peak_memory_bytes": int(states + peak_mb), "peers": len(peers),
                    "host_syncs": rec.host_syncs[rank], "nvlink_bytes": int(link["nvlink"]),
                    "nic_bytes": int(link["nic"]), "p2p_sends": int(sends), "collective_bytes": collective,
                    "micro_batches": len(micro), "tokens": sum(mb.num_tokens for mb in micro)})
    return out


def _summary(cache: dict, templates: Templates, key: tuple) -> tuple[set[int], dict[tuple[int, int], int], int]:
    """A template's peers (ring positions), bytes sent per token of each (peer, member), and sends."""
    found = cache.get(key)
    if found is None:
        positions: set[int] = set()
        sent: dict[tuple[int, int], int] = {}
        count = 0
        for t in templates.ops[key]:
            if t.kind in ("send", "recv"):
                positions.add(t.peer)
                if t.kind == "send":
                    sent[(t.peer, t.member)] = sent.get((t.peer, t.member), 0) + t.per_token * DTYPE_BYTES.get(t.dtype, 4)
                    count += 1
        found = cache[key] = (positions, sent, count)
    return found


WORST = (("peak_memory_bytes", "peak memory"), ("peers", "peers"), ("host_syncs", "host syncs"),
         ("nic_bytes", "NIC bytes"), ("nvlink_bytes", "NVLink bytes"))


def worst_ranks(ranks: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """The rank with the largest value of each figure (ties: the lowest rank)."""
    return [(label, max(ranks, key=lambda r: (r[key], -r["rank"]))) for key, label in WORST] if ranks else []


def print_table(ranks: list[dict[str, Any]], header: str, errors: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=header)
    tracked = any("tracked_peak_bytes" in r for r in ranks)  # --dry-run-measure-memory: the worst rank's
    for col in ("worst by", "rank", "peak memory", *(("tracked peak",) if tracked else ()), "vs 80 GB", "peers",
                "host syncs", "NVLink sent", "NIC sent", "P2P sends", "micro-batches"):
        table.add_column(col, justify="left" if col == "worst by" else "right")
    for label, r in worst_ranks(ranks):
        measured = (f"{r['tracked_peak_bytes'] / 1e9:,.1f} GB" if "tracked_peak_bytes" in r else "-",) if tracked else ()
        table.add_row(label, str(r["rank"]), f"{r['peak_memory_bytes'] / 1e9:,.1f} GB", *measured,
                      f"{r['peak_memory_bytes'] / HBM_BYTES:.0%}", str(r["peers"]), str(r["host_syncs"]),
                      f"{r['nvlink_bytes'] / 1e9:,.2f} GB", f"{r['nic_bytes'] / 1e9:,.2f} GB", f"{r['p2p_sends']:,}",
                      str(r["micro_batches"]))
    console.print(table)
    for e in errors:
        console.print(f"[red]error:[/red] {e}", highlight=False)


def templates_summary(templates: Templates) -> dict[str, int]:
    return {"ring_shapes": len({s for s, _, _ in templates.ops}), "exact_shapes": len(templates.exact)}
