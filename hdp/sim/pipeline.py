"""1F1B pipeline schedule of one HDP rank's micro-batches, for the pipeline bubble.

Stage s runs min(P-s-1, m) warm-up forwards, then alternates one forward and one backward, then the
remaining backwards (Megatron's non-interleaved 1F1B). F(s, i) waits for F(s-1, i) and the
activation transfer; B(s, i) for B(s+1, i) and the gradient transfer. Every stage holds the same
number of layers, so a micro-batch's forward and backward take the same time on every stage.
"""

from __future__ import annotations

from collections import deque


def one_f_one_b(fwd: list[float], bwd: list[float], stages: int, send: list[float] | None = None) -> float:
    """Makespan of one pipeline; ``send[i]`` is the stage-to-stage transfer of micro-batch i."""
    m, p = len(fwd), stages
    if m == 0:
        return 0.0
    if p == 1:
        return sum(fwd) + sum(bwd)
    send = send or [0.0] * m
    ops: list[list[tuple[str, int]]] = []
    for s in range(p):
        w = min(p - s - 1, m)
        seq = [("F", i) for i in range(w)]
        for i in range(m - w):
            seq += [("F", w + i), ("B", i)]
        seq += [("B", i) for i in range(m - w, m)]
        ops.append(seq)
    f_end = [[-1.0] * m for _ in range(p)]
    b_end = [[-1.0] * m for _ in range(p)]
    clock = [0.0] * p
    ptr = [0] * p
    todo = deque(range(p))
    pending = set(range(p))
    while todo:
        s = todo.popleft()
        pending.discard(s)
        progressed = False
        while ptr[s] < len(ops[s]):
            kind, i = ops[s][ptr[s]]
            if kind == "F":
                if s > 0 and f_end[s - 1][i] < 0:
                    break
                ready = f_end[s - 1][i] + send[i] if s > 0 else 0.0
                clock[s] = max(clock[s], ready) + fwd[i]
                f_end[s][i] = clock[s]
            else:
                if s < p - 1 and b_end[s + 1][i] < 0:
                    break
                ready = b_end[s + 1][i] + send[i] if s < p - 1 else 0.0
                clock[s] = max(clock[s], ready) + bwd[i]
                b_end[s][i] = clock[s]
            ptr[s] += 1
            progressed = True
        if progressed:
            for t in (s - 1, s + 1):
                if 0 <= t < p and t not in pending and ptr[t] < len(ops[t]):
                    pending.add(t)
                    todo.append(t)
    assert all(ptr[s] == len(ops[s]) for s in range(p)), "1F1B schedule did not complete"
    return max(clock)
