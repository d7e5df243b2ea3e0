"""Soak: a long ``hdp train`` on 4 local CPU ranks with a checkpoint every 50 steps and one worker
SIGKILLed mid-run (``--max-restarts 1``), printing one JSON object.

The corpus is built so global batches vary wildly in shape: documents of 1-3 tokens (a step of
them holds thousands), mid-sized ones, and full ``--max-seq-len`` ones whose sequence needs a ring
of every rank at the derived capacity. Every step has the same token count (``--global-batch-tokens``:
the runtime's contract), but the number and lengths of its sequences are random.

While the run goes, this script polls the metrics file (the wall-clock arrival of every step) and
the workers' resident memory (``/proc``), then reports: steps done (each step exactly once?),
errors, RSS growth per step (least-squares slope over the steps after warm-up, per rank), the
slowest step vs the median, and the restart time (kill -> first step of the restarted run).

    python benchmarks/soak.py --steps 300 --out soak.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_corpus(path: str, seed: int, max_seq_len: int) -> dict[str, int]:
    """JSONL of mixed documents: ~55% of tokens in tiny documents, the rest mid-sized and full-length."""
    rng = random.Random(seed)
    counts = {"tiny": 0, "mid": 0, "full": 0}
    with open(path, "w") as f:
        for _ in range(400):
            kind = rng.choices(["tiny", "mid", "full"], weights=[0.2, 0.6, 0.2])[0]
            if kind == "tiny":  # a burst of tiny documents, so some steps hold thousands of them
                docs = ["".join(rng.choice("abcdefgh") for _ in range(rng.randint(1, 3))) for _ in range(800)]
            elif kind == "mid":
                docs = ["x" * rng.randint(10, 300)]
            else:
                docs = ["y" * max_seq_len]
            for text in docs:
                f.write(json.dumps({"text": text}) + "\n")
            counts[kind] += len(docs)
    return counts


def worker_rss(parent: int) -> list[int]:
    """Resident bytes of ``parent``'s child processes (the ranks), from /proc."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != parent:
                continue
            with open(f"/proc/{pid}/status") as f:
                rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
            out.append(rss)
        except (OSError, StopIteration, ValueError, IndexError):
            continue
    return out


def slope(xs: list[float], ys: list[float]) -> float:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


def sequence_counts(data: str, a: argparse.Namespace) -> dict[str, int]:
    """How many sequences the steps' global batches hold (the same pure function of data, seed, step)."""
    from hdp.data.batches import BatchStream
    from hdp.data.load import load_training_data

    stream = BatchStream(load_training_data(data).corpus, a.global_batch_tokens, a.max_seq_len, a.seed)
    counts = [len(stream.batch(s).lengths) for s in range(a.steps)]
    return {"min": min(counts), "median": int(statistics.median(counts)), "max": max(counts),
            "steps_with_1000_or_more": sum(c >= 1000 for c in counts)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--nproc", type=int, default=4)
    p.add_argument("--save-every", type=int, default=50)
    p.add_argument("--kill-step", type=int, default=None, help="step at which rank 1 is killed (default: 0.4 * steps + 7)")
    p.add_argument("--global-batch-tokens", type=int, default=4096)
    p.add_argument("--max-seq-len", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the JSON here")
    a = p.parse_args(argv)
    kill_step = a.kill_step if a.kill_step is not None else int(0.4 * a.steps) + 7
    work = tempfile.mkdtemp(prefix="hdp-soak-")
    data, metrics, marker = (os.path.join(work, n) for n in ("data.jsonl", "metrics.jsonl", "killed"))
    corpus = write_corpus(data, a.seed, a.max_seq_len)
    env = dict(os.environ, HDP_TEST_KILL=f"1:{kill_step}:{marker}",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "hdp.cli", "train", "--nproc", str(a.nproc), "--steps", str(a.steps),
           "--data", data, "--global-batch-tokens", str(a.global_batch_tokens), "--max-seq-len", str(a.max_seq_len),
           "--save-dir", os.path.join(work, "ck"), "--save-every", str(a.save_every), "--max-restarts", "1",
           "--metrics", metrics, "--no-progress", "--seed", str(a.seed), "--timeout", "30"]
    started = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    arrivals: list[tuple[int, float]] = []  # (step, wall time its line appeared), in order, across attempts
    rss: dict[int, list[int]] = {}  # step -> the ranks' RSS sampled while it was the newest step
    done_lines = 0
    while proc.poll() is None:
        time.sleep(0.1)
        try:
            with open(metrics) as f:
                lines = [x for x in f.read().splitlines() if x.endswith("}")]
        except OSError:
            continue
        if len(lines) < done_lines:  # trimmed by the resume
            done_lines = len(lines)
        now = time.time()
        for line in lines[done_lines:]:
            arrivals.append((json.loads(line)["step"], now))
        done_lines = len(lines)
        sample = worker_rss(proc.pid)
        if arrivals and len(sample) == a.nproc:
            rss.setdefault(arrivals[-1][0], sample)
    out, err = proc.communicate()
    records = [json.loads(x) for x in open(metrics).read().splitlines() if x.strip()]
    steps = [r["step"] for r in records]
    times = [r["step_time_s"] for r in records]
    kill_time = float(open(marker).read()) if os.path.exists(marker) else None
    resumed_from = max((s for s in range(0, kill_step + 1, a.save_every) if s <= kill_step), default=0)
    # The restarted run's first step is the checkpoint's; lines of steps before the kill may land after it.
    after = [t for s, t in arrivals if kill_time is not None and t > kill_time and s == resumed_from]
    warm = min(20, a.steps // 5)
    # The restarted processes are new: fit each attempt's RSS separately, past its warm-up.
    segments = [[s for s in rss if warm <= s < kill_step], [s for s in rss if s >= resumed_from + warm]]
    slopes = [slope([float(s) for s in seg], [statistics.fmean(rss[s]) for s in seg]) for seg in segments if len(seg) > 2]
    result = {"sequences_per_step": sequence_counts(data, a), **{
        "steps_requested": a.steps, "steps_done": len(records), "each_step_once": steps == list(range(a.steps)),
        "exit_code": proc.returncode,
        # Survivors of the injected kill report their dead peer before the restart: expected, counted apart.
        "errors": [x for x in err.split("restarting all")[-1].splitlines() if "error" in x.lower()],
        "kill_reports": sum("error" in x.lower() for x in err.split("restarting all")[0].splitlines()),
        "restarts": err.count("restarting all"), "kill_step": kill_step, "resumed_from_step": resumed_from,
        "restart_s": round(after[0] - kill_time, 3) if after else None,
        "rss_growth_bytes_per_step": [round(s) for s in slopes],
        "rss_mb_by_step": {s: round(statistics.fmean(rss[s]) / 1e6, 1) for s in sorted(rss)[::10]},
        "rss_mean_mb": round(statistics.fmean(statistics.fmean(v) for v in rss.values()) / 1e6, 1) if rss else None,
        "step_time_median_s": round(statistics.median(times), 4),
        "step_time_max_s": round(max(times), 4), "slowest_vs_median": round(max(times) / statistics.median(times), 2),
        "slowest_step": records[times.index(max(times))]["step"],
        "max_ring": max(r["max_ring"] for r in records), "rings_max": max(r["rings"] for r in records),
        "corpus_docs": corpus, "wall_s": round(time.time() - started, 1), "workdir": work,
        "stderr_tail": err.strip().splitlines()[-6:],
    }}
    text = json.dumps(result, indent=1)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    return 0 if result["each_step_once"] and proc.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
