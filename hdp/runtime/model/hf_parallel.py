"""``--tp`` for ``--hf-model``: transformers' own TP plan applied with hdp's autograd functions, by hooks.

The plan is the model's ``_tp_plan`` (transformers 5 merges the config's ``base_model_tp_plan`` under
``model.`` with the causal LM's own entries), e.g. for Llama: q/k/v/gate/up ``colwise``, o/down
``rowwise``, ``model.embed_tokens`` ``embedding_rowwise``, ``lm_head`` ``colwise_gather_output``,
Qwen3's q/k norms ``replicated_with_grad_allreduce``. ``apply_tp_plan`` slices each named module's
weights in place (this TP rank's contiguous block, as ``tensor_parallel.SPLIT_DIM`` says) and adds
forward hooks; the modelling code runs unpatched. transformers 5's attention reshapes with
``(*input_shape, -1, head_dim)`` and ``num_key_value_groups`` is a ratio, so the local heads need no
attribute change.

The layout is the built-in decoder's (``tensor_parallel``, sequence parallel): the residual stream
and the norms hold this rank's ``[Tp / tp, h]`` rows. Each module holding column-parallel children
(``self_attn``, ``mlp``) gathers the tokens on entry (backward: reduce-scatter) and reduce-scatters its
row-parallel output back onto the rows (backward: all-gather). The embedding is vocab-parallel (ids
outside this rank's rows look up row 0 and are zeroed, then the partial lookups are reduce-scattered);
``lm_head`` takes the all-gathered final norm and its vocabulary-column logits are all-gathered over
the vocabulary (``colwise_gather_output``; backward: this rank's columns of the gradient, since every
TP rank computes the same loss from the same full logits). Every replicated parameter (the norms)
thus gets a partial gradient, which the optimizer all-reduces over TP (``optim.zero``), exactly as
for the built-in decoder. Row-parallel biases are refused (``check_hf_tp``): each rank would add it.
"""

from __future__ import annotations

import fnmatch
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from hdp.runtime.model.tensor_parallel import TensorParallel, gather_sequence, scatter_sequence, split_dim

COLUMN, ROW = "colwise", "rowwise"
STYLES = (COLUMN, ROW, "embedding_rowwise", "colwise_gather_output", "replicated_with_grad_allreduce")
"""The plan entries this module applies; any other one (packed, local, expert-parallel styles) is refused."""


def check_hf_tp(config: Any, tp: int, path: str) -> None:
    """One-line refusal (before any process starts) of an HF model ``tp`` ranks cannot split exactly."""
    plan = getattr(config, "base_model_tp_plan", None)
    if not plan:
        raise ValueError(f"--tp {tp} with --hf-model {path}: its config has no base_model_tp_plan")
    odd = sorted({s for s in plan.values() if s not in STYLES})
    if odd:
        raise ValueError(f"--tp {tp} with --hf-model {path}: tensor-parallel styles {odd} are not supported")
    row_bias = getattr(config, "mlp_bias", False) or (config.model_type != "qwen2" and getattr(config, "attention_bias", False))
    if row_bias:
        raise ValueError(f"--tp {tp} with --hf-model {path}: biases on the row-parallel o_proj/down_proj "
                         "(attention_bias/mlp_bias) are not supported")


def model_tp_plan(hf: nn.Module) -> dict[str, str]:
    """Module-name pattern -> style for the whole causal LM (``model.``-prefixed base plan + the LM's own)."""
    plan = dict(getattr(hf, "_tp_plan", None) or {})
    if not any(k.startswith("model.layers") for k in plan):  # an older merge: the base plan under "model."
        plan.update({f"model.{k}": v for k, v in (hf.config.base_model_tp_plan or {}).items()})
    plan.setdefault("model.embed_tokens", "embedding_rowwise")
    plan.setdefault("lm_head", "colwise_gather_output")
    return plan


def apply_tp_plan(hf: nn.Module, tp: TensorParallel) -> None:
    """Shard ``hf``'s planned modules in place to TP rank ``tp.rank``'s slices and hook in the collectives."""
    plan = model_tp_plan(hf)
    styles: dict[str, str] = {}
    for name, _ in hf.named_modules():
        hits = [s for pat, s in plan.items() if fnmatch.fnmatchcase(name, pat)]
        if hits:
            styles[name] = hits[0]
    odd = sorted({s for s in styles.values() if s not in STYLES})
    if odd:
        raise ValueError(f"--tp {tp.size}: tensor-parallel styles {odd} are not supported")
    modules = dict(hf.named_modules())
    state: dict[str, int] = {}
    tied = hf.lm_head.weight is hf.model.embed_tokens.weight
    for name, style in styles.items():
        if style in (COLUMN, ROW, "embedding_rowwise", "colwise_gather_output"):
            _shard(modules[name], name, tp)
    if tied:
        hf.lm_head.weight = hf.model.embed_tokens.weight
    regions = {name.rpartition(".")[0] for name, s in styles.items() if s == COLUMN}
    for region in sorted(regions):
        rows = [n for n, s in styles.items() if s == ROW and n.rpartition(".")[0] == region]
        if not rows:
            raise ValueError(f"--tp {tp.size}: {region} has column-parallel linears but no row-parallel one")
        _hook_region(modules[region], tp, state)
    _hook_embedding(hf.model.embed_tokens, tp, state)
    _hook_head(hf.lm_head, tp, state)


def _shard(module: nn.Module, name: str, tp: TensorParallel) -> None:
    """Replace ``module``'s weight (and a column-parallel bias) by this rank's contiguous block."""
    for pname, p in list(module.named_parameters(recurse=False)):
        dim = split_dim(f"{name}.{pname}")
        if dim is None:
            raise ValueError(f"--tp {tp.size}: {name}.{pname} has no tensor-parallel split (a row-parallel bias?)")
        if p.shape[dim] % tp.size:
            raise ValueError(f"--tp {tp.size}: {name}.{pname} {tuple(p.shape)} does not split {tp.size} ways")
        piece = p.detach().chunk(tp.size, dim=dim)[tp.rank].clone()
        setattr(module, pname, nn.Parameter(piece, requires_grad=p.requires_grad))
    for attr, dim in (("out_features", 0), ("in_features", 1), ("num_embeddings", 0)):
        if hasattr(module, attr) and hasattr(module, "weight"):
            setattr(module, attr, module.weight.shape[dim])


def _hook_region(module: nn.Module, tp: TensorParallel, state: dict[str, int]) -> None:
    """Gather the tokens into ``module`` (attention or MLP), reduce-scatter its output onto the rows."""
    def enter(_m: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        pe = kwargs.get("position_embeddings")
        t = pe[0].shape[1] if pe is not None else state["t"]  # attention: cos [1, T, D]; the MLP after it: state
        state["t"] = t
        if "hidden_states" in kwargs:
            kwargs = {**kwargs, "hidden_states": gather_sequence(kwargs["hidden_states"][0], tp, t)[None]}
        else:
            args = (gather_sequence(args[0][0], tp, t)[None], *args[1:])
        return args, kwargs

    def leave(_m: nn.Module, _args: tuple, _kwargs: dict, out: Any) -> Any:
        if isinstance(out, tuple):
            return (scatter_sequence(out[0][0], tp)[None], *out[1:])
        return scatter_sequence(out[0], tp)[None]

    module.register_forward_pre_hook(enter, with_kwargs=True)
    module.register_forward_hook(leave, with_kwargs=True)


def _hook_embedding(emb: nn.Module, tp: TensorParallel, state: dict[str, int]) -> None:
    """Vocab-parallel lookup: this rank's rows' vectors (zero elsewhere), reduce-scattered onto the rows."""
    masks: list[torch.Tensor] = []

    def enter(_m: nn.Module, args: tuple) -> tuple:
        ids = args[0]                                                        # [1, T]
        lo = tp.rank * emb.weight.shape[0]
        mine = (ids >= lo) & (ids < lo + emb.weight.shape[0])
        masks.append(mine)
        state["tokens"] = ids.shape[1]
        return (torch.where(mine, ids - lo, 0), *args[1:])

    def leave(_m: nn.Module, _args: tuple, out: torch.Tensor) -> torch.Tensor:
        mine = masks.pop()
        return scatter_sequence((out * mine[..., None].to(out.dtype))[0], tp)[None]

    emb.register_forward_pre_hook(enter)
    emb.register_forward_hook(leave)


def _hook_head(head: nn.Module, tp: TensorParallel, state: dict[str, int]) -> None:
    """The final norm's rows all-gathered into the vocab-parallel head; its logits gathered over the vocabulary."""

    def enter(_m: nn.Module, args: tuple) -> tuple:
        return (gather_sequence(args[0][0], tp, state["tokens"])[None], *args[1:])

    def leave(_m: nn.Module, _args: tuple, out: torch.Tensor) -> torch.Tensor:
        return _GatherVocab.apply(out, tp)

    head.register_forward_pre_hook(enter)
    head.register_forward_hook(leave)


class _GatherVocab(torch.autograd.Function):
    """[..., V / tp] per rank -> [..., V] on every rank; backward: this rank's columns (the loss is replicated)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, tp: TensorParallel) -> torch.Tensor:  # type: ignore[override]
        ctx.tp, ctx.width = tp, x.shape[-1]
        parts = [torch.empty_like(x) for _ in range(tp.size)]
        dist.all_gather(parts, x.contiguous(), group=tp.group)
        return torch.cat(parts, dim=-1)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        lo = ctx.tp.rank * ctx.width
        return g[..., lo:lo + ctx.width].contiguous(), None
