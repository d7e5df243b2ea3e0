"""Checkpoint directories on disk, without torch: naming, finding the newest, validating, pruning.

A save directory holds ``step-000050/``, ``step-000100/``, ... Each is written as
``step-000100.tmp/`` and renamed when complete, so a name without ``.tmp`` is always a whole
checkpoint: DCP's files (``.metadata`` and one ``__<rank>_0.distcp`` per rank) plus ``hdp.json``
(step, Adam's step count, RNG state, the config that decides exactness, the parameter layout and
the size and SHA-256 of every file). Validation reads only ``hdp.json`` and hashes the files, so a
bad checkpoint is one clear line before any process starts; nothing here ever modifies a checkpoint
except ``prune``, which runs only after a newer one is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from typing import Any

from hdp.runtime.config import DEFAULT_AUX_LOSS_COEF

MANIFEST = "hdp.json"
FORMAT = "hdp-checkpoint/1"
_NAME = re.compile(r"^step-(\d{6,})$")

EXACT_FIELDS = ("model", "hf_model", "dtype", "seed", "global_batch_tokens", "max_seq_len", "lr", "weight_decay",
                "max_grad_norm", "lr_schedule", "warmup_steps", "min_lr", "schedule_steps")
"""Config fields a resumed run must share with the saved one for its losses to equal an uninterrupted run's."""
LATER_FIELDS = {"aux_loss": "document", "aux_loss_coef": DEFAULT_AUX_LOSS_COEF, "z_loss_coef": 0.0, "tp": 1, "pp": 1}
"""Fields checked too, added after the first checkpoints were written: a manifest without one was saved
with its value here (the router losses' defaults; no tensor or pipeline parallelism). ``tp``/``pp`` decide
how the saved shards are cut (one tensor per (stage, TP index), ``coords``), so a resume with another T or P
is refused (resharding across T or P does not exist); another number of HDP ranks is resharded by DCP."""


def step_dir(save_dir: str, step: int) -> str:
    return os.path.join(save_dir, f"step-{step:06d}")


def complete_checkpoints(save_dir: str) -> list[tuple[int, str]]:
    """(step, path) of the complete checkpoints in ``save_dir``, oldest first (``.tmp`` ones are ignored)."""
    if not os.path.isdir(save_dir):
        return []
    found = []
    for name in os.listdir(save_dir):
        m = _NAME.match(name)
        path = os.path.join(save_dir, name)
        if m and os.path.isdir(path):
            found.append((int(m.group(1)), path))
    return sorted(found)


def resolve(path: str) -> str:
    """``--resume PATH``: a checkpoint directory itself, or a save directory (its newest checkpoint)."""
    if os.path.isfile(os.path.join(path, MANIFEST)) or os.path.isfile(os.path.join(path, ".metadata")):
        return path
    found = complete_checkpoints(path)
    if not found:
        what = "does not exist" if not os.path.exists(path) else "holds no complete checkpoint (step-NNNNNN/)"
        raise ValueError(f"--resume {path!r} {what}: give a --save-dir of an earlier run or one of its step-* "
                         "directories")
    return found[-1][1]


def file_digest(path: str) -> list[Any]:
    """[size in bytes, sha256 hex] of one file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return [os.path.getsize(path), h.hexdigest()]


def read_manifest(path: str, share: tuple[int, int] | None = None) -> dict[str, Any]:
    """The checked ``hdp.json`` of checkpoint ``path``: every file present with its recorded size and hash.

    ``share=(rank, world_size)``: every file's presence and size are checked, but only every
    ``world_size``-th file (from the ``rank``-th, names sorted) is hashed, so W ranks resuming hash the
    checkpoint once between them instead of W times (their verdicts are combined by the caller).
    """
    where = f"checkpoint {path!r}"
    try:
        with open(os.path.join(path, MANIFEST)) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{where} is incomplete ({MANIFEST} missing): resume from an earlier step-* "
                         "directory") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{where} is corrupt ({MANIFEST} unreadable: {e}): resume from an earlier step-* "
                         "directory") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{where} is not an hdp checkpoint of format {FORMAT} ({MANIFEST} has "
                         f"{str(manifest.get('format') if isinstance(manifest, dict) else manifest)[:40]!r})")
    rank, world_size = share or (0, 1)
    for i, (name, (size, digest)) in enumerate(sorted(manifest["files"].items())):
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            raise ValueError(f"{where} is incomplete: {name} is missing; resume from an earlier step-* directory")
        actual_size = os.path.getsize(file)
        if actual_size != size:
            raise ValueError(f"{where} is truncated or corrupt: {name} has {actual_size:,} bytes, {size:,} were "
                             "written; resume from an earlier step-* directory")
        if i % world_size != rank:
            continue  # another rank hashes this one
        actual = file_digest(file)
        if actual[1] != digest:
            raise ValueError(f"{where} is corrupt: {name} does not match the SHA-256 recorded when it was written; "
                             "resume from an earlier step-* directory")
    return manifest


def check_compatible(manifest: dict[str, Any], exact: dict[str, Any], layout: list[list[Any]] | None,
                     data_id: str, path: str) -> None:
    """Refuse a checkpoint whose model, layout, data or exactness-deciding config differs from this run's."""
    saved = manifest["config"]
    diffs = [f"{k} {saved.get(k)!r} (this run: {exact[k]!r})" for k in EXACT_FIELDS if saved.get(k) != exact.get(k)]
    diffs += [f"{k} {saved.get(k, v)!r} (this run: {exact[k]!r})" for k, v in LATER_FIELDS.items()
              if saved.get(k, v) != exact.get(k, v)]
    if diffs:
        raise ValueError(f"checkpoint {path!r} was saved with an incompatible config: " + ", ".join(diffs[:3])
                         + "; resume with the flags it was saved with (or start a new --save-dir)")
    if manifest["data"] != data_id:
        raise ValueError(f"checkpoint {path!r} was trained on other data ({manifest['data'][:16]}…, this --data "
                         f"is {data_id[:16]}…): resume with the --data and --tokenizer it was saved with")
    saved_layout = manifest["layout"] or []  # with --tp/--pp: this coordinate's (``coords.saved_for``)
    if layout is not None and saved_layout != layout:
        raise ValueError(f"checkpoint {path!r} holds another model's parameters ({len(saved_layout)} tensors, "
                         f"{sum(e[2] for e in saved_layout):,} elements; this model: {len(layout)}, "
                         f"{sum(e[2] for e in layout):,}): resume with the --model it was saved with")


_RANK_FILE = re.compile(r"^__(\d+)_\d+\.distcp$")
"""DCP's data files: ``__<rank>_<index>.distcp``, written by that rank of the saving group."""


def own_files(tmp: str, rank: int) -> list[str]:
    """The files of ``tmp`` that rank ``rank`` hashes: the DCP data files it wrote itself and, on rank 0,
    everything else (``.metadata``). Every file falls to exactly one rank."""
    names = sorted(n for n in os.listdir(tmp) if n != MANIFEST)
    mine = []
    for name in names:
        m = _RANK_FILE.match(name)
        if (int(m.group(1)) if m else 0) == rank:
            mine.append(name)
    return mine


def digests(tmp: str, names: list[str]) -> dict[str, list[Any]]:
    """``{name: [size, sha256]}`` of the files ``names`` of ``tmp``."""
    return {n: file_digest(os.path.join(tmp, n)) for n in names}


def write_manifest(tmp: str, manifest: dict[str, Any], recorded: dict[str, list[Any]] | None = None) -> None:
    """Record the digests of everything DCP wrote, then ``hdp.json`` itself (fsynced: the rename follows).

    ``recorded``: the digests every rank computed of its own files (``own_files``, gathered), so rank
    0 does not hash the whole checkpoint while the others wait; None: hash every file here. Either way
    the manifest must name exactly the files in ``tmp``.
    """
    files = sorted(n for n in os.listdir(tmp) if n != MANIFEST)
    if recorded is None:
        recorded = digests(tmp, files)
    assert sorted(recorded) == files, f"digests of {sorted(recorded)} for the files {files}"
    manifest = {**manifest, "files": {n: recorded[n] for n in files}}
    target = os.path.join(tmp, MANIFEST)
    with open(target, "w") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def publish(tmp: str, final: str) -> None:
    """Rename the complete ``tmp`` into place (atomic on one file system)."""
    if os.path.exists(final):  # a checkpoint of this step from an earlier attempt of the same run
        shutil.rmtree(final)
    os.rename(tmp, final)
    fd = os.open(os.path.dirname(final) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prune(save_dir: str, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints."""
    for _, path in complete_checkpoints(save_dir)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def trim_jsonl(path: str | None, start_step: int) -> None:
    """Keep only the lines of steps before ``start_step`` (a resumed run appends the rest again)."""
    if not path or not os.path.exists(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                if json.loads(line)["step"] < start_step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                break  # a line cut by the crash: everything after it is gone too
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(kept)
    os.replace(tmp, path)


def data_identity(doc_lengths) -> str:
    """SHA-256 of the corpus's document lengths: the batches of every step follow from them and the seed."""
    try:
        import numpy as np

        raw = np.asarray(doc_lengths, dtype=np.int64).tobytes()
    except ImportError:  # pragma: no cover - numpy ships with the data extras
        raw = ",".join(map(str, doc_lengths)).encode()
    return hashlib.sha256(raw).hexdigest()


def resume_source(resume: str | None, save_dir: str | None, restarted: bool) -> str | None:
    """Where a run continues from: ``--resume``, else (after a restart) ``--save-dir``'s newest checkpoint.

    A fresh run into a ``--save-dir`` that already holds checkpoints is refused rather than mixing two runs.
    """
    if resume:
        return resolve(resume)
    if save_dir and complete_checkpoints(save_dir):
        if restarted:
            return complete_checkpoints(save_dir)[-1][1]
        raise ValueError(f"--save-dir {save_dir!r} already holds checkpoints: add --resume {save_dir} to continue "
                         "that run, or choose an empty --save-dir")
    return None


def agent_attempt() -> int:
    """Which attempt of torchrun's elastic agent this process is (TORCHELASTIC_RESTART_COUNT; 0: the first)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def restarted_by_agent() -> bool:
    """True in a process that torchrun's elastic agent restarted."""
    return agent_attempt() > 0
