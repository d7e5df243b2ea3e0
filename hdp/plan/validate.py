"""Check a plan against rules 1-5 of docs/plan-format.md (rule 6, determinism, is a property of planners).

Returns every violation found, so a test or a user sees all that is wrong at once; ``check_plan``
raises with them. Rule 4 (fewest ranks) is checked for plans of strategy ``hdp`` (the contract's
rule 4) and for every plan that says ``"fewest_ranks": true``.
"""

from __future__ import annotations

from hdp.plan.replay import DeadlockError, replay
from hdp.plan.zigzag import member_segments, ranks_needed
from hdp.plan.types import Plan


def violations(plan: Plan, limit: int = 20) -> list[str]:
    out: list[str] = []

    def bad(msg: str) -> bool:
        out.append(msg)
        return len(out) >= limit

    lengths = [s.length for s in plan.sequences]
    fewest = plan.strategy == "hdp" or plan.extra.get("fewest_ranks") is True
    covered: list[list[tuple[int, int]]] = [[] for _ in lengths]
    ring_homes: dict[int, list[tuple[int, int]]] = {r.id: [] for r in plan.rings}
    seq_ring = {}
    for ring in plan.rings:
        if not 0 <= ring.seq < len(lengths):
            if bad(f"ring {ring.id} splits sequence {ring.seq}, which does not exist"):
                return out
            continue
        if ring.seq in seq_ring and bad(f"sequence {ring.seq} is in two rings"):
            return out
        seq_ring[ring.seq] = ring
        if any(not 0 <= r < plan.num_ranks for r in ring.ranks) and bad(f"ring {ring.id} names a rank outside 0..{plan.num_ranks - 1}"):
            return out

    for rp in plan.ranks:
        last_ring = -1
        for m, mb in enumerate(rp.micro_batches):
            where = f"rank {rp.rank} micro-batch {m}"
            # Rule 3: capacity.
            if mb.num_tokens > mb.token_limit and bad(f"{where} holds {mb.num_tokens} tokens > token_limit {mb.token_limit}"):
                return out
            if mb.offload_ratio == 0 and mb.token_limit != plan.capacity_tokens and bad(
                f"{where} has token_limit {mb.token_limit} != capacity {plan.capacity_tokens} without offloading"
            ):
                return out
            # Rule 5: ring ids strictly increase along the list.
            for g in mb.rings:
                if g <= last_ring and bad(f"{where}: ring {g} after ring {last_ring} (ids must increase)"):
                    return out
                last_ring = g
                if g in ring_homes:
                    ring_homes[g].append((rp.rank, m))
                elif bad(f"{where} lists unknown ring {g}"):
                    return out
            ring_seqs = {plan.rings[g].seq for g in mb.rings if g in ring_homes}
            inside = [s for s in mb.segments if 0 <= s.seq < len(lengths) and 0 <= s.start < s.end <= lengths[s.seq]]
            for s in mb.segments:
                if not (0 <= s.seq < len(lengths) and 0 <= s.start < s.end <= lengths[s.seq]):
                    if bad(f"{where}: segment {s} lies outside its sequence"):
                        return out
                    continue
                covered[s.seq].append((s.start, s.end))
                ring = seq_ring.get(s.seq)
                if ring is None and (s.start, s.end) != (0, lengths[s.seq]) and bad(
                    f"{where}: sequence {s.seq} is in no ring but not whole"
                ):
                    return out
                if ring is not None and s.seq not in ring_seqs and bad(
                    f"{where}: piece of sequence {s.seq} in a micro-batch that does not list ring {ring.id}"
                ):
                    return out
            # Rule 2: the member's pieces are exactly its zig-zag pair.
            for g in mb.rings:
                if g not in ring_homes or not 0 <= plan.rings[g].seq < len(lengths):
                    continue  # reported above
                ring = plan.rings[g]
                if rp.rank not in ring.ranks:
                    if bad(f"{where} lists ring {g} but rank {rp.rank} is not a member"):
                        return out
                    continue
                want = member_segments(ring.seq, lengths[ring.seq], ring.size, ring.ranks.index(rp.rank))
                have = tuple(sorted((s for s in mb.segments if s.seq == ring.seq), key=lambda s: s.start))
                if want != have and bad(f"{where}: ring {g} pieces {have} are not the zig-zag pair {want}"):
                    return out
            # Rule 4: fewest ranks, for plans that claim it.
            if fewest:
                for s in inside:
                    ring = seq_ring.get(s.seq)
                    need = ranks_needed(lengths[s.seq], mb.token_limit)
                    size = ring.size if ring else 1
                    if size != need and bad(
                        f"{where}: sequence {s.seq} ({lengths[s.seq]} tokens) on {size} ranks; token_limit "
                        f"{mb.token_limit} needs {need}"
                    ):
                        return out

    # Rule 1: coverage, exactly once.
    for i, spans in enumerate(covered):
        spans.sort()
        pos = 0
        for a, b in spans:
            if a != pos:
                if bad(f"sequence {i}: tokens [{min(a, pos)}, {max(a, pos)}) are {'missing' if a > pos else 'placed twice'}"):
                    return out
            pos = max(pos, b)
        if pos != lengths[i] and bad(f"sequence {i}: tokens [{pos}, {lengths[i]}) are missing"):
            return out
    # Rule 2: each ring in exactly one micro-batch of each member, and nowhere else.
    for ring in plan.rings:
        homes = ring_homes[ring.id]
        if sorted(r for r, _ in homes) != sorted(ring.ranks) and bad(
            f"ring {ring.id} appears on ranks {sorted(r for r, _ in homes)}, members are {sorted(ring.ranks)}"
        ):
            return out
    if not out:
        try:
            replay(plan, [[1.0] * len(rp.micro_batches) for rp in plan.ranks])
        except DeadlockError as e:
            out.append(str(e))
    return out


def check_plan(plan: Plan) -> None:
    errs = violations(plan)
    if errs:
        raise ValueError("plan breaks docs/plan-format.md:\n  " + "\n  ".join(errs))
