"""One command for everything only a GPU can show; one JSON file out.

    python benchmarks/gpu_check.py [--out gpu_check.json]

Without a CUDA device it prints one line and exits 0. With one it runs, each step under its own
timeout so the whole stays under 8 minutes, and records every step's exit code, time, output tail
and parsed results (the file is rewritten after each step, so a killed run keeps what finished):

1. ``pytest tests/gpu`` (kernels, offload streams, calibration on the device);
2. ``benchmarks/attention.py``: packed document attention vs batched SDPA at 512–64K-token
   documents (flash-attn varlen when installed, else FlexAttention), one ring member's block efficiency;
3. ``benchmarks/offload.py``: step time and peak memory at r = 0, the planner's r, 0.5 and 1.0;
   ``benchmarks/ring_kernels.py``: one member's ring blocks as flat, two-level and bidirectional
   rings compute them (8,192 tokens a member, ring of 8 = 2 nodes x 4), each variant's kernel time
   over flat's;
4. ``hdp calibrate`` at LLaMA-7B shapes (the profile is kept beside the JSON);
5. a 1-GPU ``hdp train`` of ``llama-1b`` (1.1B, TinyLlama shapes) on 32K-token batches in bf16
   (``--zero 1`` when this ``hdp train`` has it), under torchrun: tokens/s, MFU, peak memory, and
   the planner's predicted step time and memory beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUDGET_S = 470.0
"""All steps together; each step also has its own limit below."""
TRAIN_TOKENS = 32768
TRAIN_MODEL = "llama-1b"
TRAIN_STEPS = 4


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def run_step(cmd: list[str], timeout_s: float) -> dict:
    """Run ``cmd`` in the repository root; never raises (a timeout is a recorded result)."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=max(timeout_s, 1.0))
        rc, out, err, timed_out = proc.returncode, proc.stdout, proc.stderr, False
    except subprocess.TimeoutExpired as e:
        rc, timed_out = None, True
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
    return {"cmd": " ".join(cmd), "rc": rc, "timed_out": timed_out, "seconds": round(time.perf_counter() - start, 2),
            "limit_s": round(timeout_s, 1), "stdout_tail": out[-3000:], "stderr_tail": err[-3000:]}


def read_json(path: str) -> object | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def write_report(path: str, report: dict) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".gpu-check-")
    with os.fdopen(fd, "w") as f:
        json.dump(report, f, indent=1, default=str)
        f.write("\n")
    os.replace(tmp, path)


def train_has(flag: str) -> bool:
    proc = subprocess.run([sys.executable, "-m", "hdp.cli", "train", "--help"], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=60)
    return flag in proc.stdout


def train_prediction(profile_path: str | None) -> dict:
    """What the planner predicts for the same batches: step time (shipped and calibrated profile) and memory."""
    from hdp.data.batches import BatchStream
    from hdp.data.load import load_corpus
    from hdp.plan import build_cost_model, make_plan

    stream = BatchStream(load_corpus(None), TRAIN_TOKENS, TRAIN_TOKENS, 0)
    out: dict = {}
    for label, prof in (("h100_profile", None), ("calibrated_profile", profile_path)):
        if label == "calibrated_profile" and not (prof and os.path.exists(prof)):
            continue
        cost = build_cost_model(TRAIN_MODEL, prof)
        times = [make_plan(stream.batch(s).lengths, 1, TRAIN_TOKENS, cost, max_len=TRAIN_TOKENS).predicted_step_time_s
                 for s in range(1, TRAIN_STEPS)]
        out[f"predicted_step_time_s_{label}"] = statistics.median(times)
    cost = build_cost_model(TRAIN_MODEL)
    states, acts = cost.model_state_bytes(1), cost.layers * cost.act_bytes_per_token_layer * TRAIN_TOKENS
    out.update(predicted_model_state_GiB=states / 2**30, predicted_activation_GiB=acts / 2**30,
               predicted_peak_GiB=(states + acts) / 2**30,
               note="the planner counts bf16 weights+grads and fp32 Adam states (ZeRO-1 over 1 rank) and the "
                    "activations of one full micro-batch; the runtime keeps optimizer states in the parameter dtype "
                    "unless its ZeRO/master-weight options say otherwise")
    return out


def train_child(result_path: str, train_args: list[str]) -> int:
    """Runs as the one torchrun rank: hdp train in-process, then the device's peak memory."""
    import torch

    from hdp.cli import main

    rc = main(["train", *train_args])
    stats = {"rc": rc}
    if torch.cuda.is_available():
        stats.update(max_memory_allocated_GiB=torch.cuda.max_memory_allocated(0) / 2**30,
                     max_memory_reserved_GiB=torch.cuda.max_memory_reserved(0) / 2**30)
    with open(result_path, "w") as f:
        json.dump(stats, f)
    return rc


def summarise_train(metrics_path: str) -> dict:
    try:
        with open(metrics_path) as f:
            recs = [json.loads(line) for line in f if line.strip()]
    except (OSError, json.JSONDecodeError):
        return {}
    timed = recs[1:] or recs  # step 0 pays for compilation
    if not timed:
        return {}
    out = {"steps": len(recs), "loss_first": recs[0]["loss"], "loss_last": recs[-1]["loss"]}
    for key in ("tokens_per_s", "step_time_s", "mfu", "tflops_per_device"):
        if all(key in r for r in timed):
            out[f"{key}_median_after_step0"] = statistics.median(r[key] for r in timed)
    mem = sorted({k for r in timed for k in r if "mem" in k})
    for key in mem:
        out[f"{key}_max"] = max(r.get(key, 0) for r in timed)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu_check.json", help="the JSON report (default gpu_check.json)")
    ap.add_argument("--train-child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.train_child:
        return train_child(args.train_child[0], args.train_child[1:])
    try:
        import torch
    except ImportError:
        print("gpu_check: torch is not installed; nothing to check (install torch with CUDA on a GPU machine)")
        return 0
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; skipped (run this on a GPU machine)")
        return 0
    out = os.path.abspath(args.out)
    base = os.path.splitext(out)[0]
    report: dict = {"device": torch.cuda.get_device_name(0), "devices": torch.cuda.device_count(),
                    "torch": torch.__version__, "cuda": torch.version.cuda, "budget_s": BUDGET_S, "steps": {}}
    start = time.perf_counter()

    def step(name: str, cmd: list[str], limit_s: float) -> dict:
        left = BUDGET_S - (time.perf_counter() - start)
        if left < 10:
            res = {"cmd": " ".join(cmd), "skipped": "time budget spent"}
        else:
            print(f"gpu_check: {name} (limit {min(limit_s, left):.0f} s) ...", flush=True)
            res = run_step(cmd, min(limit_s, left))
            print(f"gpu_check: {name}: rc={res['rc']} in {res['seconds']} s" + (" (timed out)" if res["timed_out"] else ""),
                  flush=True)
        report["steps"][name] = res
        report["total_s"] = round(time.perf_counter() - start, 1)
        write_report(out, report)
        return res

    py = sys.executable
    res = step("pytest_gpu", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/gpu"], 120)
    tail = res.get("stdout_tail", "").strip().splitlines()
    res["summary"] = tail[-1] if tail else ""

    attn_json = base + "-attention.json"
    res = step("attention", [py, "benchmarks/attention.py", "--json-out", attn_json], 75)
    res["result"] = read_json(attn_json)

    offload_json = base + "-offload.json"
    res = step("offload", [py, "benchmarks/offload.py", "--tokens", "16384", "32768", "--cpu-tokens", "256", "512",
                           "--steps", "2", "--json-out", offload_json], 60)
    res["result"] = read_json(offload_json)

    kernels_json = base + "-ring-kernels.json"
    res = step("ring_kernels", [py, "benchmarks/ring_kernels.py", "--json-out", kernels_json], 45)
    res["result"] = read_json(kernels_json)

    profile = base + "-profile.json"
    res = step("calibrate", [py, "-m", "hdp.cli", "calibrate", "--model", "llama-7b", "--out", profile,
                             "--no-progress"], 90)
    res["result"] = read_json(profile)

    metrics, child = base + "-train.jsonl", base + "-train-child.json"
    train_args = ["--model", TRAIN_MODEL, "--dtype", "bfloat16", "--steps", str(TRAIN_STEPS),
                  "--global-batch-tokens", str(TRAIN_TOKENS), "--capacity", str(TRAIN_TOKENS),
                  "--max-seq-len", str(TRAIN_TOKENS), "--metrics", metrics, "--no-progress", "--timeout", "120"]
    notes = []
    if train_has("--zero"):
        train_args += ["--zero", "1"]
    else:
        notes.append("this hdp train has no --zero flag: run without ZeRO (one rank: nothing to shard anyway)")
    res = step("train_1gpu", [py, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
                              os.path.abspath(__file__), "--train-child", child, *train_args], 130)
    res["notes"] = notes
    res["result"] = summarise_train(metrics)
    res["memory"] = read_json(child)
    try:
        res["planner"] = train_prediction(profile)
    except Exception as e:  # noqa: BLE001 - a prediction failure must not lose the measurements
        res["planner"] = {"error": f"{type(e).__name__}: {e}"}
    report["total_s"] = round(time.perf_counter() - start, 1)
    failed = [n for n, r in report["steps"].items() if r.get("rc") != 0]
    report["failed_steps"] = failed
    write_report(out, report)
    print(f"gpu_check: wrote {out} in {report['total_s']} s; " + (f"failed: {', '.join(failed)}" if failed else "all steps passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
