"""Memory and speed of ``hdp data prepare`` on a large JSONL file made on the fly.

Writes ``--mb`` MB of synthetic JSONL (documents of 200 B to 200 KB, streamed to disk), prepares it
with ``--workers`` processes (byte-level, or a small BPE trained here with ``--bpe``), and samples
the resident memory of the whole process tree (the command and its workers) every 50 ms. The
claim checked: peak memory does not grow with the input (compare ``--mb 64`` with ``--mb 1024``).

    python benchmarks/data_prepare.py [--mb 1024] [--workers 2] [--bpe] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def write_jsonl(path: str, mb: int, seed: int = 0) -> int:
    rng = random.Random(seed)
    words = [("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))) for _ in range(5000)]
    want, written = mb << 20, 0
    with open(path, "w") as f:
        while written < want:
            n = int(10 ** rng.uniform(1.5, 4.5))  # words per document: long-tailed
            line = json.dumps({"text": " ".join(rng.choices(words, k=n)), "id": written}) + "\n"
            f.write(line)
            written += len(line)
    return written


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) * 1024
        except (OSError, StopIteration):
            pass
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=1024)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--bpe", action="store_true", help="a BPE tokenizer (trained here) instead of bytes")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as d:
        src = os.path.join(d, "docs.jsonl")
        size = write_jsonl(src, args.mb)
        cmd = [sys.executable, "-m", "hdp.cli", "data", "prepare", src, "--out", os.path.join(d, "store"),
               "--workers", str(args.workers), "--no-progress"]
        if args.bpe:
            from tests.data.files import write_bpe_tokenizer

            with open(src) as f:  # trained on the start of the data itself, so merges cover its words
                sample = [json.loads(next(f))["text"] for _ in range(50)]
            cmd += ["--tokenizer", write_bpe_tokenizer(os.path.join(d, "tok"), vocab_size=8000, byte_level=True,
                                                       seed_texts=sample)]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True,
                                env=dict(os.environ, PYTHONPATH=ROOT))
        peak = 0
        while proc.poll() is None:
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(0.05)
        seconds = time.perf_counter() - start
        out = proc.stdout.read().strip()
        if proc.returncode:
            sys.exit(f"prepare failed with exit code {proc.returncode}")
        with open(os.path.join(d, "store", "manifest.json")) as f:
            manifest = json.load(f)
    result = {
        "config": {"mb": args.mb, "workers": args.workers, "tokenizer": "bpe" if args.bpe else "bytes"},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "input_bytes": size, "seconds": round(seconds, 2), "mb_per_s": round(size / 2**20 / seconds, 2),
        "peak_tree_rss_mb": round(peak / 2**20, 1), "documents": manifest["num_documents"],
        "tokens": manifest["num_tokens"], "vocab_size": manifest["tokenizer"]["vocab_size"], "summary": out,
    }
    print(json.dumps(result))
    print(f"{size / 2**20:,.0f} MB in {seconds:.1f} s ({result['mb_per_s']} MB/s), peak RSS of the process tree "
          f"{result['peak_tree_rss_mb']:,} MB, {manifest['num_tokens']:,} tokens")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
