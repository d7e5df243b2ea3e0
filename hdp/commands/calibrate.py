"""``hdp calibrate``: measure this machine's device and write a profile for ``--profile``.

    hdp calibrate --out my-gpu.json                 # the local GPU at LLaMA-7B shapes (CPU: small)
    hdp calibrate --out cpu.json --quick            # seconds: tiny sizes, for tests
    hdp plan --profile my-gpu.json ...
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from hdp.commands.config_file import add_config_arguments
from hdp.plan.cost.model_config import PRESETS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", metavar="PROFILE_JSON", required=True, help="where to write the profile (hdp.device/1)")
    p.add_argument("--model", default=None, choices=list(PRESETS),
                   help="measure at this model's layer shapes (default: llama-7b on a GPU, as hdp plan plans, and "
                        "small on CPU, where llama-7b's layers take minutes)")
    p.add_argument("--device", choices=("auto", "cpu"), default="auto",
                   help="auto: the local accelerator when there is one, else CPU (default auto)")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default=None,
                   help="default: bfloat16 on an accelerator, what a GPU run trains in, and float32 on CPU, "
                        "hdp train's default")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: cores / 4, what a rank of the default hdp train --nproc 4 gets)")
    p.add_argument("--quick", action="store_true", help="tiny sizes and short timings: seconds, for tests")
    p.add_argument("--name", default=None, help="profile name (default: from the device)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or summary")
    add_config_arguments(p)


def _check_out(path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"--out: directory {directory!r} does not exist; create it or choose another path")
    if not os.access(directory, os.W_OK):
        raise ValueError(f"--out: directory {directory!r} is not writable")


def run(args: argparse.Namespace) -> int:
    _check_out(args.out)
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    import torch

    from hdp.calibrate.profile import CPU, GPU, QUICK, calibrate, device_name, slug, steps
    from hdp.commands.plan import write_atomically
    from hdp.plan.cost.device import DeviceProfile
    from hdp.plan.cost.model_config import get_model

    use_acc = args.device == "auto" and torch.accelerator.is_available()
    device = torch.accelerator.current_accelerator() if use_acc else torch.device("cpu")
    assert device is not None
    if not use_acc:
        torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // 4))
    dtype = getattr(torch, args.dtype or ("bfloat16" if use_acc else "float32"))
    model = get_model(args.model or ("llama-7b" if use_acc else "small"))
    sizes = QUICK if args.quick else (GPU if use_acc else CPU)
    threads = torch.get_num_threads()
    name = args.name or (slug(device_name(device)) if use_acc else f"cpu-{model.name}-{threads}t")
    source = (f"hdp calibrate on {device_name(device)}, torch {torch.__version__}, {str(dtype).removeprefix('torch.')}, "
              f"{model.name} shapes" + (f", {threads} thread(s)" if not use_acc else "") + (", --quick" if args.quick else ""))
    p2p = use_acc and torch.accelerator.device_count() >= 2
    start = time.perf_counter()
    profile = _measure(model, device, dtype, sizes, name, source, steps(sizes, p2p), progress=not args.no_progress,
                       calibrate=calibrate)
    DeviceProfile.from_dict(profile, name=name)  # what hdp plan --profile will load
    import json

    try:
        write_atomically(args.out, json.dumps(profile, indent=1) + "\n")
    except OSError as e:
        raise ValueError(f"cannot write {args.out!r}: {e.strerror or e}") from None
    if not args.no_progress:
        _print_summary(profile, args.out, time.perf_counter() - start)
    return 0


def _measure(model, device, dtype, sizes, name, source, total, *, progress, calibrate):
    if not progress:
        return calibrate(model, device, dtype, sizes, name=name, source=source)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]calibrate"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                  TimeElapsedColumn(), console=Console(file=sys.stderr)) as bar:
        task = bar.add_task("", total=total)
        first = [True]

        def on_step(what: str) -> None:
            if not first[0]:
                bar.advance(task)
            first[0] = False
            bar.update(task, description=what)

        out = calibrate(model, device, dtype, sizes, name=name, source=source, on_step=on_step)
        bar.update(task, completed=total, description="done")
    return out


def _print_summary(profile: dict, path: str, seconds: float) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"hdp calibrate · {profile['name']} · {seconds:.1f} s", show_header=False)
    t.add_row("peak (for MFU)", f"{profile['peak_tflops']:.4g} TFLOP/s")
    t.add_row("GEMM TFLOP/s by rows", ", ".join(f"{m}: {v:.3g}" for m, v in profile["gemm_tflops"].items()))
    t.add_row("attention TFLOP/s by length", ", ".join(f"{s}: {v:.3g}" for s, v in profile["attn_tflops"].items()))
    t.add_row("d2h / h2d", f"{profile['d2h_GBps']:.3g} / {profile['h2d_GBps']:.3g} GB/s")
    if "p2p_GBps" in profile["measured"]:
        t.add_row("P2P 0 -> 1", f"{profile['measured']['p2p_GBps']:.3g} GB/s")
    t.add_row("per-layer overhead", f"{profile['layer_overhead_s'] * 1e6:.0f} µs")
    t.add_row("memory", f"{profile['mem_total_GiB']:.1f} GiB")
    t.add_row("written to", path)
    Console().print(t)
