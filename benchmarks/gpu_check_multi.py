"""The multi-GPU check for one node of 2-8 GPUs: NCCL rings of every algorithm, exact against one GPU,
a resume that restores every buffer, host syncs per step. One JSON file out.

    python benchmarks/gpu_check_multi.py [--out gpu_check_multi.json] [--nproc N]

With fewer than 2 CUDA devices it prints one line and exits 0. Otherwise, N = min(devices, 8)
NCCL ranks (``--nproc`` to choose 2..8), ``small`` model (4 layers, 8 heads, 4 KV heads), 16K-token
batches of documents up to 4,096 tokens and a per-rank capacity that splits them into rings of up
to 4 members, under torchrun:

* ``exactness``: 1 GPU in float32 and twice in bf16 (4,096-token micro-batches, and the whole batch
  in one), then N GPUs in bf16 with ``--ring-algo flat``, ``two-level`` (a fake ``--gpus-per-node
  2``: rings of 4 span two "nodes") and ``bidirectional``. The same global batches, so the same
  losses up to rounding: each N-GPU run's drift from float32 (max over steps) must be no larger than
  the 1-GPU bf16 runs' drift from float32. Two 1-GPU samples, because one is not a measure of bf16
  noise: on CPU (``--cpu-dry``, tiny model) the two packings alone drifted 2.5e-4 and 5.8e-4.
* ``resume``: N GPUs save after every step (run A, and again as A' for the run-to-run noise floor
  of NCCL and the kernels); run B resumes from A's step 2 and saves step 3. Every tensor of B's
  step-3 checkpoint (parameters, fp32 masters, both moments, per rank) must match A's within twice
  the A-vs-A' difference: a buffer that was not restored differs by a whole training step or more.
* ``host_syncs``: every rank's device syncs per train step (``torch.cuda.set_sync_debug_mode``),
  which must not exceed the 1-GPU run's by more than ``SYNC_SLACK``: a sync per ring step or per
  rank grows with the ring or the world.

Each run is a section of ``gpu_check.py`` (own session, process group killed on its time limit,
JSON rewritten after each); the verdicts are computed from the runs' metrics and checkpoints.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = "small"
STEPS = 3
TOKENS = 16384
MAX_LEN = 4096
FAKE_GPUS_PER_NODE = 2
SYNC_SLACK = 8
"""Host syncs per step a multi-GPU rank may make beyond the 1-GPU run's (the fingerprint check's
all-reduce result, the gradient norm): a fixed number, whatever the ring size or world size."""
BUDGET_S = 900.0
RUN_LIMIT_S = 150.0


def _gpu_check():
    spec = importlib.util.spec_from_file_location("_gpu_check", os.path.join(HERE, "gpu_check.py"))
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def train_args(dtype: str, capacity: int, *extra: str, model: str = MODEL) -> list[str]:
    return ["--model", model, "--dtype", dtype, "--steps", str(STEPS), "--global-batch-tokens", str(TOKENS),
            "--max-seq-len", str(MAX_LEN), "--capacity", str(capacity), "--lr-schedule", "constant", "--seed", "0",
            "--no-progress", "--timeout", "120", *extra]


def runs(nproc: int, work: str, model: str = MODEL) -> dict[str, tuple[int, list[str]]]:
    """Every run: name -> (ranks, hdp train arguments). ``work`` holds their metrics and checkpoints."""
    ring_cap = MAX_LEN // min(nproc, 4)  # a 4,096-token document needs min(N, 4) ranks

    def bf16(*extra: str) -> list[str]:
        return train_args("bfloat16", ring_cap, *extra, model=model)

    out: dict[str, tuple[int, list[str]]] = {
        "1gpu_float32": (1, train_args("float32", MAX_LEN, model=model)),
        "1gpu_bfloat16": (1, train_args("bfloat16", MAX_LEN, model=model)),
        "1gpu_bfloat16_one_micro_batch": (1, train_args("bfloat16", TOKENS, model=model)),
        f"{nproc}gpu_flat": (nproc, bf16("--ring-algo", "flat")),
        f"{nproc}gpu_two-level": (nproc, bf16("--ring-algo", "two-level", "--gpus-per-node",
                                              str(min(FAKE_GPUS_PER_NODE, nproc // 2)))),
        f"{nproc}gpu_bidirectional": (nproc, bf16("--ring-algo", "bidirectional")),
    }
    for name in ("resume_a", "resume_a_again"):
        out[name] = (nproc, bf16("--ring-algo", "flat", "--save-dir", os.path.join(work, name), "--save-every", "1",
                                 "--keep", str(STEPS + 1)))
    out["resume_b"] = (nproc, bf16("--ring-algo", "flat", "--resume", os.path.join(work, "resume_a", step_dir(2)),
                                   "--save-dir", os.path.join(work, "resume_b")))
    for name, (_, args) in out.items():
        args += ["--metrics", os.path.join(work, f"{name}.jsonl")]
    return out


def step_dir(step: int) -> str:
    return f"step-{step:06d}"


def losses(metrics_path: str) -> list[float]:
    try:
        with open(metrics_path) as f:
            return [float(json.loads(line)["loss"]) for line in f if line.strip()]
    except (OSError, ValueError, KeyError):
        return []


def drift(a: list[float], b: list[float]) -> float:
    """Largest per-step loss difference; inf when the runs did not both finish the same steps."""
    if not a or len(a) != len(b):
        return math.inf
    return max(abs(x - y) for x, y in zip(a, b))


ONE_GPU_BF16 = ("1gpu_bfloat16", "1gpu_bfloat16_one_micro_batch")


def exactness(loss_by_run: dict[str, list[float]], nproc: int) -> dict:
    """Each N-GPU bf16 run's drift from 1-GPU float32, allowed what the 1-GPU bf16 runs drift from it."""
    fp32 = loss_by_run.get("1gpu_float32", [])
    one = {name: drift(loss_by_run.get(name, []), fp32) for name in ONE_GPU_BF16}
    allowance = max(one.values())
    out: dict[str, Any] = {"bf16_vs_fp32_1gpu": one, "allowance": allowance, "algorithms": {}}
    for algo in ("flat", "two-level", "bidirectional"):
        losses_n = loss_by_run.get(f"{nproc}gpu_{algo}", [])
        d = drift(losses_n, fp32)
        out["algorithms"][algo] = {"drift_vs_1gpu_fp32": d, "drift_vs_1gpu_bf16": drift(losses_n, loss_by_run.get(
            "1gpu_bfloat16", [])), "ok": math.isfinite(allowance) and d <= allowance}
    out["ok"] = all(v["ok"] for v in out["algorithms"].values())
    return out


def load_checkpoint(path: str) -> dict[str, Any]:
    """A DCP checkpoint directory as one flat {key: tensor or value} dict, read in this process (no GPU, no group)."""
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:
        dest = os.path.join(tmp, "state.pt")
        dcp_to_torch_save(path, dest)
        state = torch.load(dest, map_location="cpu", weights_only=False)
    flat: dict[str, Any] = {}

    def walk(prefix: str, obj: Any) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat[prefix] = obj

    walk("", state)
    try:  # the step counters live beside the tensors (hdp.json)
        with open(os.path.join(path, "hdp.json")) as f:
            meta = json.load(f)
        flat.update({f"hdp.{k}": meta[k] for k in ("step", "adam_steps") if k in meta})
    except (OSError, ValueError):
        pass
    return flat


def state_diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    """Max absolute difference per key (tensors in float64; other values 0 or inf); keys of one only: inf."""
    import torch

    out: dict[str, float] = {}
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if key not in a or key not in b:
            out[key] = math.inf
        elif isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            out[key] = math.inf if x.shape != y.shape else float((x.double() - y.double()).abs().max()) if x.numel() else 0.0
        else:
            out[key] = 0.0 if x == y else math.inf
    return out


def resume_verdict(resumed: dict[str, Any], reference: dict[str, Any], again: dict[str, Any],
                   before: dict[str, Any]) -> dict:
    """Resumed vs uninterrupted, per buffer, within twice the run-to-run noise (``again`` vs ``reference``).

    ``before`` (the checkpoint resumed from) shows the check can fail: one step moved each buffer
    further than the allowance, or that buffer proves nothing.
    """
    err, noise, moved = state_diff(resumed, reference), state_diff(again, reference), state_diff(before, reference)
    buffers = {}
    for key in err:
        allowed = 2 * noise.get(key, math.inf) + 1e-6
        buffers[key] = {"resumed_vs_uninterrupted": err[key], "run_to_run": noise.get(key), "one_step": moved.get(key),
                        "ok": err[key] <= allowed, "informative": moved.get(key, 0.0) > allowed}
    return {"buffers": buffers, "ok": bool(buffers) and all(b["ok"] for b in buffers.values()),
            "uninformative": sorted(k for k, b in buffers.items() if not b["informative"])}


def sync_summary(children: dict[str, list[dict]]) -> dict:
    """Host syncs per step after step 0 (compiles, first connections): per run, the worst rank's median."""
    out: dict[str, Any] = {}
    for name, ranks in children.items():
        medians = [statistics.median(c["host_syncs_per_step"][1:]) for c in ranks
                   if len(c.get("host_syncs_per_step") or []) > 1]
        out[name] = {"worst_rank_median": max(medians) if medians else None, "ranks": len(ranks)}
    single = (out.get("1gpu_bfloat16") or {}).get("worst_rank_median")
    multi = [v["worst_rank_median"] for k, v in out.items() if not k.startswith("1gpu") and v["worst_rank_median"] is not None]
    ok = single is not None and bool(multi) and max(multi) <= single + SYNC_SLACK
    return {"runs": out, "slack": SYNC_SLACK, "ok": ok}


def nccl_version(torch: Any) -> str:
    v = torch.cuda.nccl.version()
    return ".".join(map(str, v)) if isinstance(v, tuple) else str(v)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu_check_multi.json", help="the JSON report (default gpu_check_multi.json)")
    ap.add_argument("--nproc", type=int, default=None, help="NCCL ranks, 2..8 (default: min(devices, 8))")
    ap.add_argument("--cpu-dry", action="store_true",
                    help="check this script itself without GPUs: 2 CPU (gloo) ranks, tiny model; the numbers mean nothing")
    args = ap.parse_args(argv)
    if args.nproc is not None and not 2 <= args.nproc <= 8:
        print(f"gpu_check_multi: error: --nproc {args.nproc}: choose 2..8 ranks (one node)", file=sys.stderr)
        return 2
    if args.cpu_dry:
        return check(2, args.out, model="tiny", device="cpu (gloo), --cpu-dry", cuda=False)
    try:
        import torch
    except ImportError:
        print("gpu_check_multi: torch is not installed; nothing to check (install torch with CUDA on a GPU machine)")
        return 0
    devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if devices < 2:
        print(f"gpu_check_multi: {devices} CUDA device{'' if devices == 1 else 's'} here, this check needs 2 or more; "
              "skipped (run it on one node with 2-8 GPUs)")
        return 0
    nproc = args.nproc or min(devices, 8)
    if not 2 <= nproc <= min(devices, 8):
        print(f"gpu_check_multi: error: --nproc {nproc}: choose 2..{min(devices, 8)} (this node has {devices} GPUs)",
              file=sys.stderr)
        return 2
    return check(nproc, args.out, model=MODEL, device=torch.cuda.get_device_name(0), cuda=True)


def check(nproc: int, out: str, *, model: str, device: str, cuda: bool) -> int:
    """Every run, then the verdicts; returns the exit code (1 when a run or a check failed)."""
    import torch

    gc = _gpu_check()
    out = os.path.abspath(out)
    work = os.path.splitext(out)[0] + "-runs"
    shutil.rmtree(work, ignore_errors=True)  # ours: an earlier run's metrics or checkpoints must not pass for these
    os.makedirs(work)
    script = os.path.join(HERE, "gpu_check.py")
    planned = runs(nproc, work, model)
    sections = [(name, [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
                        script, "--train-child", os.path.join(work, f"{name}-rank{{rank}}.json"), *targs],
                 RUN_LIMIT_S, None) for name, (n, targs) in planned.items()]
    report: dict = {"device": device, "devices": torch.cuda.device_count() if cuda else 0, "nproc": nproc,
                    "torch": torch.__version__, "cuda": torch.version.cuda, "nccl": nccl_version(torch) if cuda else None,
                    "model": model, "steps": {}}
    report = gc.run_sections(sections, out, report, budget_s=BUDGET_S, label="gpu_check_multi",
                            say=lambda line: print(line, flush=True))
    loss_by_run = {name: losses(os.path.join(work, f"{name}.jsonl")) for name in planned}
    children = {name: [c for r in range(n) if (c := gc.read_json(os.path.join(work, f"{name}-rank{r}.json")))]
                for name, (n, _) in planned.items()}
    report["losses"] = loss_by_run
    report["exactness"] = exactness(loss_by_run, nproc)
    report["host_syncs"] = sync_summary(children) if cuda else {"ok": True, "note": "not counted without CUDA"}
    try:
        ck = {name: load_checkpoint(os.path.join(work, name, step_dir(step)))
              for name, step in (("resume_a", STEPS), ("resume_a_again", STEPS), ("resume_b", STEPS))}
        before = load_checkpoint(os.path.join(work, "resume_a", step_dir(2)))
        report["resume"] = resume_verdict(ck["resume_b"], ck["resume_a"], ck["resume_a_again"], before)
    except Exception as e:  # noqa: BLE001 - a missing checkpoint is a failed check, not a lost report
        report["resume"] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    checks = {k: bool(report[k].get("ok")) for k in ("exactness", "resume", "host_syncs")}
    report["checks"] = checks
    failed = report["failed_steps"] + [k for k, ok in checks.items() if not ok]
    gc.write_report(out, report)
    print(f"gpu_check_multi: wrote {out}; " + (f"failed: {', '.join(failed)}" if failed else "all checks passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
