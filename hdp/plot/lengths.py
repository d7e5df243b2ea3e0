"""The length distribution's long tail: sequences, tokens and attention FLOPs per length bucket.

Buckets are powers of two, [2^i, 2^(i+1)). Attention FLOPs of a document grow with its causal
pairs s(s+1)/2 for every model (hdp.plan.cost.flops), so their share needs no model: a few long
documents that hold a small share of the tokens can hold most of the attention work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True, slots=True)
class LengthsPicture:
    lows: tuple[int, ...]
    """Bucket i holds lengths in [lows[i], 2 * lows[i]); only non-empty buckets are kept."""
    sequences: tuple[int, ...]
    token_share: tuple[float, ...]
    attention_share: tuple[float, ...]
    total_sequences: int
    total_tokens: int


def read_lengths_source(path: str) -> list[int]:
    """The lengths ``hdp plot --lengths`` draws: a lengths file (one per line), or a token store's
    document lengths (a directory from ``hdp data prepare``; its index, no token is read)."""
    import os

    from hdp.data.store import MANIFEST, Store, is_store
    from hdp.data.synthetic import read_lengths

    if os.path.isdir(path):
        if not is_store(path):
            raise ValueError(f"--lengths {path!r} is a directory but not a token store (no {MANIFEST} from "
                             "'hdp data prepare'): give a lengths file (one length per line) or a store")
        return list(Store.open(path).corpus().doc_lengths)
    try:
        return read_lengths(path)
    except UnicodeDecodeError:
        raise ValueError(f"--lengths {path!r} is not a text file: give a lengths file (one length per line) or a "
                         "token store directory") from None


def lengths_data(lengths: Sequence[int]) -> LengthsPicture:
    if not lengths:
        raise ValueError("the lengths file has no lengths; write one positive integer per line")
    if min(lengths) < 1:
        raise ValueError(f"lengths must be >= 1, found {min(lengths)}")
    seqs: dict[int, int] = {}
    tokens: dict[int, int] = {}
    pairs: dict[int, int] = {}
    for s in lengths:
        low = 1 << (s.bit_length() - 1)
        seqs[low] = seqs.get(low, 0) + 1
        tokens[low] = tokens.get(low, 0) + s
        pairs[low] = pairs.get(low, 0) + s * (s + 1) // 2
    lows = tuple(sorted(seqs))
    total_tokens, total_pairs = sum(tokens.values()), sum(pairs.values())
    return LengthsPicture(lows, tuple(seqs[b] for b in lows), tuple(tokens[b] / total_tokens for b in lows),
                          tuple(pairs[b] / total_pairs for b in lows), len(lengths), total_tokens)


def _label(n: int) -> str:
    for unit, size in (("M", 2**20), ("K", 2**10)):
        if n >= size:
            return f"{n // size}{unit}"
    return str(n)


def draw_lengths(pic: LengthsPicture, path: str, title: str) -> None:
    from hdp.plot.png import new_figure, save_png

    fig, (top, bottom) = new_figure(2, height_ratios=[1.0, 1.4])
    x = list(range(len(pic.lows)))
    top.bar(x, pic.sequences, color="#8C8C8C", width=0.8)
    top.set_yscale("log")
    top.set_ylabel("sequences (log)")
    top.set_title(f"{title}: {pic.total_sequences:,} sequences, {pic.total_tokens:,} tokens")
    for i, n in zip(x, pic.sequences):
        top.text(i, n, f"{n:,}", ha="center", va="bottom", fontsize=7)
    w = 0.4
    bottom.bar([i - w / 2 for i in x], [100 * v for v in pic.token_share], width=w, color="#4C72B0", label="share of tokens")
    bottom.bar([i + w / 2 for i in x], [100 * v for v in pic.attention_share], width=w, color="#C44E52",
               label="share of attention FLOPs (Σ s² per document)")
    bottom.set_ylabel("% of the batch")
    bottom.set_xlabel("sequence length bucket [2^i, 2^(i+1)) tokens")
    bottom.set_xticks(x)
    bottom.set_xticklabels([f"{_label(b)}–" for b in pic.lows], fontsize=8, rotation=45 if len(x) > 14 else 0)
    bottom.legend(loc="upper left", frameon=False)
    fig.tight_layout()
    save_png(fig, path)
