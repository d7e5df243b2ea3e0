"""``--export-hf DIR``: write the trained model as a Hugging Face directory (config.json + model.safetensors).

The built-in decoder's parameter names and RoPE layout are ``LlamaForCausalLM``'s (``MixtralForCausalLM``'s
with experts), so its state dict is written as is beside a ``LlamaConfig`` (a ``MixtralConfig``); an ``--hf-model`` run saves its own transformers model. Either
way ``AutoModelForCausalLM.from_pretrained(DIR)`` loads it. The directory appears whole or not at all:
everything is written to a temporary sibling that is renamed at the end.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from hdp.plan.cost.model_config import ModelConfig

DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float64: "float64", torch.float16: "float16"}


def llama_config(cfg: ModelConfig, dtype: torch.dtype = torch.float32, max_positions: int = 4096):
    """The ``LlamaConfig`` of the built-in decoder ``cfg`` (untied embeddings, no biases, SiLU, default RoPE)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.ffn_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim, rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta, hidden_act="silu",
        attention_bias=False, mlp_bias=False, tie_word_embeddings=False,
        max_position_embeddings=max(max_positions, 1), dtype=DTYPE_NAMES.get(dtype, "float32"),
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )


def mixtral_config(cfg: ModelConfig, dtype: torch.dtype = torch.float32, max_positions: int = 4096):
    """The ``MixtralConfig`` of the built-in decoder ``cfg`` with experts (no sliding window, no router jitter)."""
    from transformers import MixtralConfig

    return MixtralConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.ffn_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim, rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta, hidden_act="silu",
        num_local_experts=cfg.num_experts, num_experts_per_tok=cfg.top_k, router_jitter_noise=0.0,
        sliding_window=None, tie_word_embeddings=False, output_router_logits=False,
        max_position_embeddings=max(max_positions, 1), dtype=DTYPE_NAMES.get(dtype, "float32"),
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )


def hf_config(cfg: ModelConfig, dtype: torch.dtype = torch.float32, max_positions: int = 4096):
    """The transformers config of the built-in decoder: Mixtral's with experts, Llama's without."""
    return (mixtral_config if cfg.is_moe else llama_config)(cfg, dtype, max_positions)


def check_export_dir(path: str) -> None:
    """Refuse before training what would fail (or overwrite something) after it."""
    p = Path(path)
    if p.exists():
        raise ValueError(f"--export-hf {path!r} already exists: give a new directory (nothing is overwritten)")
    parent = p.resolve().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ValueError(f"--export-hf {path!r}: cannot create it in {str(parent)!r} (missing or not writable)")


def export_hf(model: nn.Module, out_dir: str, *, max_positions: int = 4096, tokenizer: str | None = None) -> Path:
    """Write ``model`` (a ``Decoder`` or an ``HFCausalLM``) to ``out_dir``; returns the path.

    ``tokenizer``: a ``tokenizer.json`` file or a tokenizer directory the run used; saved beside the
    weights so ``AutoTokenizer.from_pretrained(out_dir)`` gives the same token ids.
    """
    final = Path(out_dir)
    check_export_dir(out_dir)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.resolve().parent))
    except OSError as e:
        raise ValueError(f"cannot write --export-hf {out_dir!r}: {e.strerror or e}") from None
    try:
        save = getattr(model, "save_hf", None)
        if save is not None:  # an HF model: transformers writes its own files
            save(tmp)
        else:
            _save_decoder(model, tmp, max_positions)
        if tokenizer is not None:
            _save_tokenizer(tokenizer, tmp)
        _default_permissions(tmp)
        os.rename(tmp, final)  # atomic on one file system: DIR appears complete or not at all
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError(f"cannot write --export-hf {out_dir!r}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _default_permissions(root: Path) -> None:
    """mkdtemp makes a private (0700) directory; give the export the permissions of any new file."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(root, 0o777 & ~umask)
    for f in root.rglob("*"):
        os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~umask)


def _save_tokenizer(source: str, out: Path) -> None:
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    src = Path(source)
    tok = (PreTrainedTokenizerFast(tokenizer_file=str(src)) if src.is_file()
           else AutoTokenizer.from_pretrained(str(src), local_files_only=True))
    tok.save_pretrained(str(out))


def _save_decoder(model: nn.Module, out: Path, max_positions: int) -> None:
    from safetensors.torch import save_file

    params = dict(model.state_dict())
    dtype = next(iter(params.values())).dtype
    hf_config(model.cfg, dtype, max_positions).save_pretrained(out)
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in params.items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
