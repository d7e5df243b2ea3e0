"""``hdp data prepare INPUT --out DIR``: tokenize a dataset once into a memory-mapped token store."""

from __future__ import annotations

import argparse
import os


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    prep = sub.add_parser("prepare", help="tokenize INPUT into a token store (docs/data.md)")
    prep.add_argument("input", metavar="INPUT",
                      help="a JSONL or Parquet file, a datasets save_to_disk directory, a directory of "
                           ".py/.txt/.md files, or one text file")
    prep.add_argument("--out", required=True, metavar="DIR", help="the store directory to create (must not exist)")
    prep.add_argument("--tokenizer", default=None, metavar="DIR",
                      help="a tokenizer.json or local Hugging Face tokenizer directory (default: byte-level)")
    prep.add_argument("--text-field", default="text", metavar="NAME",
                      help="field holding the text in JSONL/Parquet/datasets inputs (default text)")
    prep.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), metavar="N",
                      help="tokenizer processes (default: CPU count, at most 8)")
    prep.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from hdp.data.prepare import prepare

    m = prepare(args.input, args.out, tokenizer_path=args.tokenizer, text_field=args.text_field,
                workers=args.workers, progress=not args.no_progress)
    print(f"{args.out}: {m['num_documents']:,} documents, {m['num_tokens']:,} tokens ({m['dtype']}), "
          f"{m['empty_documents_skipped']:,} empty skipped, tokenizer {m['tokenizer']['name']} "
          f"({m['tokenizer']['vocab_size']:,} ids)")
    return 0
