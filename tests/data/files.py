"""Small data files and tokenizers built on the fly (no download): the same texts in every format."""

from __future__ import annotations

import json
import os
import random

WORDS = ("ring attention packs documents and splits long sequences over ranks while short ones stay whole "
         "the planner balances time not tokens gradients are summed once per step").split()


def texts(n: int = 60, seed: int = 0, empty_every: int = 7) -> list[str]:
    """Documents of very different lengths (a few long ones), with some empty ones and some non-ASCII."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if empty_every and i % empty_every == 3:
            out.append("")
            continue
        k = rng.choice((1, 3, 10, 40, 200)) if i % 11 else 600
        out.append(" ".join(rng.choice(WORDS) for _ in range(k)) + (" é ü" if i % 5 == 0 else ""))
    return out


def write_jsonl(path: str, docs: list[str], field: str = "text") -> str:
    with open(path, "w") as f:
        for i, d in enumerate(docs):
            f.write(json.dumps({"id": i, field: d, "meta": {"n": len(d)}}) + "\n")
    return path


def write_parquet(path: str, docs: list[str], field: str = "text") -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": list(range(len(docs))), field: docs}), path, row_group_size=17)
    return path


def write_datasets_dir(path: str, docs: list[str], field: str = "text") -> str:
    import datasets

    datasets.Dataset.from_dict({"id": list(range(len(docs))), field: docs}).save_to_disk(path)
    return path


def write_text_dir(path: str, docs: list[str]) -> str:
    """One file per document; names sort in document order."""
    os.makedirs(path)
    for i, d in enumerate(docs):
        with open(os.path.join(path, f"doc{i:04d}.txt"), "w", encoding="utf-8") as f:
            f.write(d)
    return path


def write_bpe_tokenizer(directory: str, vocab_size: int = 120, byte_level: bool = False,
                        seed_texts: list[str] | None = None) -> str:
    """Train a small BPE on a few strings and save it as DIR/tokenizer.json. Without ``byte_level`` its
    alphabet is the strings' characters (a vocabulary below the tiny model's 256 rows), with it the
    256 byte symbols plus merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    if byte_level:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
    else:
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
    alphabet = pre_tokenizers.ByteLevel.alphabet() if byte_level else []
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>"], initial_alphabet=alphabet,
                                  show_progress=False)
    tok.train_from_iterator(seed_texts or texts(30, seed=1, empty_every=0), trainer)
    # a BOS on every document, as Llama tokenizers add: the store must keep special tokens too
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    os.makedirs(directory, exist_ok=True)
    tok.save(os.path.join(directory, "tokenizer.json"))
    return directory
