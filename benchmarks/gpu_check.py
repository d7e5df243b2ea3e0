"""One command for everything only a GPU can show; one JSON file out (issue 19: "the GPU check, made trustworthy").

    python benchmarks/gpu_check.py [--out gpu_check.json]

Without a CUDA device it prints one line and exits 0. With one it runs the sections below in this
order, at most ``BUDGET_S`` (under 8 minutes on one H100/H200) all together:

1. ``train_1gpu``: a 1-GPU ``hdp train`` of ``llama-1b`` (1.1B, TinyLlama shapes) on 32K-token
   batches in bf16 under torchrun (first: it matters most): tokens/s (step time read after a device
   synchronize), MFU, peak memory, host syncs per step (``torch.cuda.set_sync_debug_mode``), and
   the planner's predicted step time and memory beside them;
2. ``pytest_gpu``: ``pytest tests/gpu`` (kernels, offload streams, pinned pool, allocator settings);
3. ``attention``: ``benchmarks/attention.py``, packed document attention vs batched SDPA;
4. ``ring_kernels``: ``benchmarks/ring_kernels.py``, one member's ring blocks as flat, two-level and
   bidirectional rings compute them, each over flat's;
5. ``offload``: ``benchmarks/offload.py``, step time and peak memory at several offload ratios;
6. ``memory``: the chunked LM-head loss vs full logits (time from CUDA events, median of 5; peak
   memory), the pinned pool's reported bytes vs the host allocator's, expandable segments on;
7. ``calibrate``: ``hdp calibrate`` at LLaMA-7B shapes (the profile is kept beside the JSON).

Every section is a subprocess in a session of its own; on its time limit the whole process group
gets SIGINT (pytest then prints its summary line; torchrun stops its workers), then SIGKILL after a
grace period, so nothing it started outlives it. Output goes to ``<out>-logs/<section>.log``; the
JSON (rewritten after every section, so a killed run keeps what finished) holds each section's exit
code, time, limit, output tail and parsed results.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUDGET_S = 470.0
"""All sections together; each also has its own limit (``sections``)."""
GRACE_S = 10.0
"""After SIGINT, how long a timed-out section may take to print its summary before SIGKILL."""
TRAIN_TOKENS = 32768
TRAIN_MODEL = "llama-1b"
TRAIN_STEPS = 4
SECTION_NAMES = ("train_1gpu", "pytest_gpu", "attention", "ring_kernels", "offload", "memory", "calibrate")
"""The sections, in the order they run (``sections`` builds them; ``--only`` picks from these)."""
SYNC_WARNING = "synchronizing CUDA operation"
"""What ``torch.cuda.set_sync_debug_mode("warn")`` says for every operation that waits for the device."""


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (Linux /proc; empty elsewhere). torchrun starts each worker in
    a session of its own, so the section's process group alone does not reach them."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_tree(pgid: int, tree: list[int]) -> None:
    """SIGKILL the section's group, every process of ``tree`` and each one's own group."""
    _signal_group(pgid, signal.SIGKILL)
    for pid in tree:
        try:
            _signal_group(os.getpgid(pid), signal.SIGKILL)
        except ProcessLookupError:
            continue
        except PermissionError:
            pass
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def run_section(cmd: list[str], timeout_s: float, log_path: str, *, grace_s: float = GRACE_S,
                cwd: str = ROOT) -> dict:
    """Run ``cmd`` in its own session, output to ``log_path``; never raises (a timeout is a result).

    On the limit: SIGINT to the process group, ``grace_s`` to finish (pytest prints its summary,
    torchrun stops its workers), then SIGKILL to the group and to every process that was below the
    section when its time ran out, whatever session it had moved to. After a normal exit the group
    is killed too: nothing it left running in its group outlives the section.
    """
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    start = time.perf_counter()
    timed_out = False
    with open(log_path, "w") as log:
        try:
            proc = subprocess.Popen(cmd, cwd=cwd, env=env(), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as e:
            return {"cmd": " ".join(cmd), "rc": None, "timed_out": False, "seconds": 0.0, "limit_s": round(timeout_s, 1),
                    "error": f"could not start: {e}", "log": log_path, "output_tail": ""}
        pgid = proc.pid  # start_new_session: the child leads its own group
        try:
            rc = proc.wait(timeout=max(timeout_s, 0.1))
        except subprocess.TimeoutExpired:
            timed_out = True
            tree = descendants(proc.pid)  # before anything exits: orphans cannot be found by parent later
            _signal_group(pgid, signal.SIGINT)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
            _kill_tree(pgid, tree + [p for p in descendants(proc.pid) if p not in tree])
            proc.wait()
            rc = None
        _signal_group(pgid, signal.SIGKILL)
    with open(log_path, errors="replace") as f:
        text = f.read()
    return {"cmd": " ".join(cmd), "rc": rc, "timed_out": timed_out, "seconds": round(time.perf_counter() - start, 2),
            "limit_s": round(timeout_s, 1), "log": log_path, "output_tail": text[-3000:]}


_PYTEST_SUMMARY = re.compile(r"^=+ (.*\d+ (passed|failed|errors?|skipped|deselected|xfailed|xpassed).*|no tests ran.*) =+$")
_PYTEST_OUTCOME = re.compile(r"::\S+ (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")


def pytest_summary(text: str) -> dict:
    """pytest's own summary line, else (killed before it printed one) a tally of the per-test lines of ``-v``."""
    lines = text.splitlines()
    failed = sorted({ln.split(" ", 1)[1].split(" - ")[0] for ln in lines if ln.startswith(("FAILED ", "ERROR "))})
    for line in reversed(lines):
        m = _PYTEST_SUMMARY.match(line.strip())
        if m:
            return {"summary": m.group(1), "failed_tests": failed}
    counts: dict[str, int] = {}
    for line in lines:
        m = _PYTEST_OUTCOME.search(line)
        if m:
            counts[m.group(1).lower()] = counts.get(m.group(1).lower(), 0) + 1
    seen = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no test finished"
    return {"summary": f"no summary line (killed): {seen}", "failed_tests": failed}


def read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def write_report(path: str, report: dict) -> None:
    """Atomically (a reader never sees half a file)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".gpu-check-")
    with os.fdopen(fd, "w") as f:
        json.dump(report, f, indent=1, default=str)
        f.write("\n")
    os.replace(tmp, path)


Section = tuple[str, list[str], float, Callable[[dict], None] | None]
"""(name, command, limit in seconds, a function that adds parsed results to the section's record)."""


def run_sections(sections: list[Section], out: str, report: dict, *, budget_s: float = BUDGET_S,
                 grace_s: float = GRACE_S, say: Callable[[str], None] = print, label: str = "gpu_check") -> dict:
    """Run ``sections`` in order under one budget, rewriting ``out`` after each; returns ``report``."""
    start = time.perf_counter()
    logs = os.path.splitext(out)[0] + "-logs"
    report.setdefault("steps", {})  # one entry per section ("steps": the name docs and scripts read)
    report["budget_s"] = budget_s
    for name, cmd, limit_s, parse in sections:
        left = budget_s - (time.perf_counter() - start)
        if left < 10:
            res: dict = {"cmd": " ".join(cmd), "rc": None, "skipped": "time budget spent"}
            say(f"{label}: {name}: skipped (time budget spent)")
        else:
            limit = min(limit_s, left)
            say(f"{label}: {name} (limit {limit:.0f} s) ...")
            res = run_section(cmd, limit, os.path.join(logs, f"{name}.log"), grace_s=grace_s)
            if parse is not None:
                try:
                    parse(res)
                except Exception as e:  # noqa: BLE001 - a parse failure must not lose the measurements
                    res["parse_error"] = f"{type(e).__name__}: {e}"
            say(f"{label}: {name}: rc={res['rc']} in {res['seconds']} s" + (" (timed out)" if res["timed_out"] else ""))
        report["steps"][name] = res
        report["total_s"] = round(time.perf_counter() - start, 1)
        report["failed_steps"] = [n for n, r in report["steps"].items() if r.get("rc") != 0]
        write_report(out, report)
    return report


def cuda_time_ms(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> dict:
    """``fn``'s device time from CUDA events: median (and min, max) of ``repeats`` after ``warmup`` calls."""
    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        times.append(begin.elapsed_time(end))
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "repeats": repeats}


class SyncCounter:
    """Wraps a function (the train step): the device syncs each call makes, from ``set_sync_debug_mode``.

    In "warn" mode every operation that makes the host wait for the device (``.item()``, a
    device->host copy, a blocking wait...) issues one warning; they are counted per call.
    """

    def __init__(self, fn: Callable[..., Any] | None) -> None:
        self.fn = fn
        self.per_call: list[int] = []
        self.where: dict[str, int] = {}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import warnings

        import torch

        assert self.fn is not None
        if not torch.cuda.is_available():  # nothing to count (a CPU run of the script's own check)
            return self.fn(*args, **kwargs)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                return self.fn(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("default")
                syncs = [w for w in caught if SYNC_WARNING in str(w.message)]
                self.per_call.append(len(syncs))
                for w in syncs:
                    key = f"{os.path.relpath(w.filename, ROOT)}:{w.lineno}"
                    self.where[key] = self.where.get(key, 0) + 1


def memory_checks() -> dict:
    """(Needs CUDA.) The chunked LM-head loss vs full logits, the pinned pool's accounting, expandable segments."""
    from hdp.runtime.launch.accelerator import allocator_defaults

    set_by = allocator_defaults()  # as hdp train does it: before CUDA starts
    import torch
    import torch.nn.functional as F

    from hdp.runtime.offload.host_pool import HostBufferPool, power_of_two_ceil, size_class
    from hdp.runtime.train.loss import chunked_cross_entropy

    dev = torch.device("cuda", torch.cuda.current_device())
    out: dict = {"allocator_conf_set": set_by}
    T, h, V = 16384, 2048, 128256  # 16K tokens, LLaMA-3's vocabulary
    g = torch.Generator(device=dev).manual_seed(0)
    hidden = torch.randn(T, h, device=dev, generator=g, dtype=torch.bfloat16).requires_grad_()
    weight = (torch.randn(V, h, device=dev, generator=g, dtype=torch.bfloat16) * 0.02).requires_grad_()
    labels = torch.randint(0, V, (T,), device=dev, generator=g)
    losses = {}

    def full() -> None:
        hidden.grad = weight.grad = None
        losses["full_logits"] = F.cross_entropy(F.linear(hidden, weight).float(), labels, reduction="sum")
        losses["full_logits"].backward()

    def chunked() -> None:
        hidden.grad = weight.grad = None
        losses["chunked"] = chunked_cross_entropy(hidden, weight, labels)
        losses["chunked"].backward()

    grads = {}
    for name, fn in (("full_logits", full), ("chunked", chunked)):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out[name] = {**cuda_time_ms(fn), "peak_extra_GiB": (torch.cuda.max_memory_allocated() - base) / 2**30,
                     "loss": float(losses[name])}
        grads[name] = (hidden.grad.float(), weight.grad.float())
    out["loss_rel_diff"] = abs(out["chunked"]["loss"] - out["full_logits"]["loss"]) / abs(out["full_logits"]["loss"])
    out["grad_max_abs_diff"] = [float((a - b).abs().max()) for a, b in zip(grads["chunked"], grads["full_logits"])]
    out["shape"] = {"tokens": T, "hidden": h, "vocab": V, "dtype": "bfloat16"}
    del hidden, weight, grads, losses

    key = "allocated_bytes.current"  # pinned blocks the host allocator holds (rounded sizes)
    before = torch.cuda.host_memory_stats().get(key, 0)
    pool = HostBufferPool(pin_memory=True)
    sizes = [int(2**20 * x) for x in (1.3, 3.7, 17.1, 100.5, 257.0, 3.7, 40.2, 0.01)]
    bufs = [pool.acquire(n) for n in sizes]
    held = torch.cuda.host_memory_stats().get(key, 0) - before
    out["host_pool"] = {"reported_bytes": pool.reserved_bytes, "host_allocator_bytes": held, "slabs": pool.num_slabs,
                        "exact": pool.reserved_bytes == held, "requested_bytes": sum(sizes),
                        "one_allocation_per_buffer_would_hold": sum(power_of_two_ceil(size_class(n)) for n in sizes)}
    for b in bufs:
        pool.release(b)

    torch.empty(1 << 20, device=dev)
    segments = torch.cuda.memory_snapshot()
    out["expandable_segments"] = bool(segments) and all(s.get("is_expandable", False) for s in segments)
    return out


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
                    "activations of one full micro-batch")
    return out


def train_child(result_path: str, train_args: list[str]) -> int:
    """Runs as a torchrun rank: hdp train in-process with its train step's host syncs counted, then peak memory."""
    import torch

    from hdp.cli import main
    from hdp.runtime.launch import worker

    counter = SyncCounter(getattr(worker, "train_step", None))
    if counter.fn is not None:
        worker.train_step = counter  # the worker calls it by this name once per step
    rc = main(["train", *train_args])
    stats: dict = {"rc": rc, "host_syncs_per_step": counter.per_call, "host_sync_sites": counter.where}
    if counter.fn is None:
        stats["host_syncs_note"] = "not counted: hdp.runtime.launch.worker has no train_step to wrap"
    if torch.cuda.is_available():
        stats.update(max_memory_allocated_GiB=torch.cuda.max_memory_allocated() / 2**30,
                     max_memory_reserved_GiB=torch.cuda.max_memory_reserved() / 2**30)
    rank = os.environ.get("RANK", "0")
    with open(result_path.replace("{rank}", rank), "w") as f:
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
        values = [r[key] for r in timed if isinstance(r.get(key), (int, float))]
        if values:
            out[f"{key}_max"] = max(values)
    return out


def sections(out: str, py: str = sys.executable) -> list[Section]:
    """The GPU check's sections, most important first."""
    base = os.path.splitext(out)[0]
    script = os.path.abspath(__file__)
    profile = base + "-profile.json"

    def attach(path: str) -> Callable[[dict], None]:
        return lambda res: res.update(result=read_json(path))

    def pytest_parse(res: dict) -> None:
        with open(res["log"], errors="replace") as f:
            res.update(pytest_summary(f.read()))

    metrics, child = base + "-train.jsonl", base + "-train-child.json"
    train_args = ["--model", TRAIN_MODEL, "--dtype", "bfloat16", "--steps", str(TRAIN_STEPS), "--zero", "1",
                  "--global-batch-tokens", str(TRAIN_TOKENS), "--capacity", str(TRAIN_TOKENS),
                  "--max-seq-len", str(TRAIN_TOKENS), "--metrics", metrics, "--no-progress", "--timeout", "120"]

    def train_parse(res: dict) -> None:
        res["result"] = summarise_train(metrics)
        res["child"] = read_json(child)
        syncs = (res["child"] or {}).get("host_syncs_per_step") or []
        if len(syncs) > 1:
            res["result"]["host_syncs_per_step_median_after_step0"] = statistics.median(syncs[1:])
        try:
            res["planner"] = train_prediction(profile)
        except Exception as e:  # noqa: BLE001 - a prediction failure must not lose the measurements
            res["planner"] = {"error": f"{type(e).__name__}: {e}"}

    # One hanging test must not take the section's whole limit (pytest-timeout, when installed).
    per_test_timeout = ["--timeout", "100"] if importlib.util.find_spec("pytest_timeout") else []
    attn, offload, kernels, memory = (base + s for s in ("-attention.json", "-offload.json", "-ring-kernels.json",
                                                         "-memory.json"))
    for stale in (metrics, child, attn, offload, kernels, memory):  # an earlier run's results must not pass for these
        if os.path.exists(stale):
            os.remove(stale)
    return [
        ("train_1gpu", [py, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", script,
                        "--train-child", child, *train_args], 150, train_parse),
        ("pytest_gpu", [py, "-m", "pytest", "-v", "-p", "no:cacheprovider", *per_test_timeout, "tests/gpu"], 110,
         pytest_parse),
        ("attention", [py, "benchmarks/attention.py", "--json-out", attn], 60, attach(attn)),
        ("ring_kernels", [py, "benchmarks/ring_kernels.py", "--json-out", kernels], 40, attach(kernels)),
        ("offload", [py, "benchmarks/offload.py", "--tokens", "16384", "32768", "--cpu-tokens", "256", "512",
                     "--steps", "2", "--json-out", offload], 50, attach(offload)),
        ("memory", [py, script, "--memory-child", memory], 40, attach(memory)),
        ("calibrate", [py, "-m", "hdp.cli", "calibrate", "--model", "llama-7b", "--out", profile, "--no-progress"], 90,
         attach(profile)),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu_check.json", help="the JSON report (default gpu_check.json)")
    ap.add_argument("--only", nargs="+", metavar="SECTION", help="run only these sections (names as in the report)")
    ap.add_argument("--train-child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    ap.add_argument("--memory-child", metavar="JSON", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.train_child:
        return train_child(args.train_child[0], args.train_child[1:])
    if args.memory_child:
        write_report(args.memory_child, memory_checks())
        return 0
    unknown = sorted(set(args.only or ()) - set(SECTION_NAMES))
    if unknown:  # checked before anything else: a typo is an error on any machine
        print(f"gpu_check: error: unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTION_NAMES)}",
              file=sys.stderr)
        return 2
    try:
        import torch
    except ImportError:
        print("gpu_check: torch is not installed; nothing to check (install torch with CUDA on a GPU machine)")
        return 0
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; skipped (run this on a GPU machine)")
        return 0
    out = os.path.abspath(args.out)
    todo = sections(out)
    if args.only:
        todo = [s for s in todo if s[0] in args.only]
    report: dict = {"device": torch.cuda.get_device_name(0), "devices": torch.cuda.device_count(),
                    "torch": torch.__version__, "cuda": torch.version.cuda}
    report = run_sections(todo, out, report, say=lambda line: print(line, flush=True))
    failed = report["failed_steps"]
    print(f"gpu_check: wrote {out} in {report['total_s']} s; " + (f"failed: {', '.join(failed)}" if failed else "all sections passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
