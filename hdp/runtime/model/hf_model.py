"""``--hf-model DIR``: a Hugging Face causal LM behind the built-in decoder's interface.

``HFCausalLM`` takes what the train step gives the built-in ``Decoder`` (token ids [T], positions [T],
the micro-batch's ``AttentionLayout``) and returns logits [T, V], so the planner, train step, gradient
sync and optimizer do not know which model they train. Inside, the transformers model runs its own
modelling code with ``attn_implementation="hdp"`` (``hf_attention``): one packed buffer as a batch of
one, ``position_ids`` = the tokens' true positions, the layout as a forward keyword.

Only what hdp attention computes exactly is accepted: decoder-only Llama, Qwen2, Qwen3 and Mistral
models with full causal attention (no sliding window shorter than the sequences, no soft-capping, no
attention dropout) and RoPE that depends on the position alone; and the mixture-of-experts families
Mixtral, Qwen2-MoE (without shared experts) and Qwen3-MoE with every layer sparse and no router
jitter. Their modelling code runs unpatched too: forward hooks on each layer's router (``mlp.gate``,
which returns transformers' (logits, weights, experts)) record the model's own routing for the
router losses (``Routing``, as the built-in layer records it).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hdp.plan.cost.hf_config import MOE_FAMILIES, hf_model_shape
from hdp.plan.cost.model_config import ModelConfig
from hdp.runtime.model.hf_attention import ATTN_IMPLEMENTATION, LAYOUT_KWARG, register
from hdp.runtime.model.decoder import LayerContext
from hdp.runtime.model.hf_parallel import apply_tp_plan
from hdp.runtime.model.hf_stage import cut_to_stage, stage_forward
from hdp.runtime.model.tensor_parallel import TensorParallel, gather_parameters
from hdp.runtime.model.moe import Routing

SUPPORTED_FAMILIES = ("llama", "qwen2", "qwen3", "mistral", *MOE_FAMILIES)
LENGTH_DEPENDENT_ROPE = ("dynamic", "longrope")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def load_hf_config(path: str, max_seq_len: int):
    """The model's config from ``path/config.json`` (local only), or ValueError saying what is unsupported."""
    d = Path(path)
    if not (d / "config.json").is_file():
        what = "does not exist" if not d.exists() else "has no config.json"
        raise ValueError(f"--hf-model {path!r} {what}: give a local Hugging Face model directory with a config.json")
    from transformers import AutoConfig

    try:
        with _quiet_transformers():  # its config warnings would precede our one-line error
            config = AutoConfig.from_pretrained(str(d), local_files_only=True)
    except (ValueError, OSError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"--hf-model {path!r}: cannot read config.json ({first[:200]})") from None
    check_supported(config, max_seq_len, f"--hf-model {path!r}")
    return config


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' warnings and progress bars, off: every rank would print them, around our one-line errors."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        logging.enable_progress_bar()


def check_supported(config: Any, max_seq_len: int, path: str = "the model") -> None:
    families = ", ".join(SUPPORTED_FAMILIES)
    kind = getattr(config, "model_type", None)
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"{path}: {kind} is an encoder-decoder; hdp trains decoder-only causal LMs ({families})")
    if kind not in SUPPORTED_FAMILIES:
        raise ValueError(f"{path}: model type {kind!r} is not supported; supported families: {families}")
    layer_types = set(getattr(config, "layer_types", None) or ())
    window = getattr(config, "sliding_window", None)
    if layer_types - {"full_attention"}:
        raise ValueError(f"{path}: layers of type {sorted(layer_types - {'full_attention'})} (sliding window "
                         f"{window}) are not supported; hdp attention is full causal attention")
    if kind in ("mistral", "mixtral") and window is not None and window < max_seq_len:
        raise ValueError(f"{path}: sliding_window {window} is shorter than --max-seq-len {max_seq_len} and hdp "
                         f"attention has no sliding window: set --max-seq-len <= {window} or sliding_window to null")
    rope_type = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope_type in LENGTH_DEPENDENT_ROPE:
        raise ValueError(f"{path}: rope_type {rope_type!r} depends on the sequence length a rank sees, which ring "
                         f"pieces do not share; use a position-only RoPE (default, linear, yarn, llama3)")
    if getattr(config, "attention_dropout", 0.0):
        raise ValueError(f"{path}: attention_dropout {config.attention_dropout} is not supported; set it to 0")
    for cap in ("attn_logit_softcapping", "final_logit_softcapping"):
        if getattr(config, cap, None):
            raise ValueError(f"{path}: {cap} is not supported")
    if kind in MOE_FAMILIES:
        check_moe(config, path)


def check_moe(config: Any, path: str) -> None:
    """What the router losses and the cost model need of an MoE config: every layer sparse, routing a
    function of the token alone (no jitter), no shared experts (the cost model has none), full attention."""
    if getattr(config, "router_jitter_noise", 0.0):
        raise ValueError(f"{path}: router_jitter_noise {config.router_jitter_noise} makes routing random; set it to 0")
    if getattr(config, "shared_expert_intermediate_size", 0):
        raise ValueError(f"{path}: shared experts (shared_expert_intermediate_size "
                         f"{config.shared_expert_intermediate_size}) are not in hdp's cost model; set it to 0")
    if getattr(config, "decoder_sparse_step", 1) != 1 or getattr(config, "mlp_only_layers", None):
        raise ValueError(f"{path}: dense layers among the MoE layers (decoder_sparse_step "
                         f"{config.decoder_sparse_step}, mlp_only_layers {config.mlp_only_layers}) are not supported: "
                         "hdp's shape has one kind of layer")
    if getattr(config, "use_sliding_window", False):
        raise ValueError(f"{path}: use_sliding_window is not supported; hdp attention is full causal attention")


def model_shape(config: Any, name: str) -> ModelConfig:
    """The planner's view of the model (cost model, capacity): the one ``hdp plan --hf-model`` reads
    from config.json without transformers (``hdp.plan.cost.hf_config``)."""
    return hf_model_shape(config, name)  # with experts, top_k and each expert's width for the MoE families


class HFCausalLM(nn.Module):
    """A transformers causal LM with the built-in ``Decoder``'s forward: (tokens, positions, layout) -> logits."""

    def __init__(self, hf: nn.Module, name: str = "hf", tp: TensorParallel | None = None,
                 stage: tuple[int, int] = (0, 1)) -> None:
        super().__init__()
        register()
        hf.set_attn_implementation(ATTN_IMPLEMENTATION)  # transformers' own switch (checks the name is registered)
        self.hf = hf
        self.cfg = model_shape(hf.config, name)
        self.tp = tp if tp is not None and tp.size > 1 else None
        """``--tp``: this rank holds its shards of transformers' TP plan (``hf_parallel``); logits stay whole."""
        if self.tp is not None:
            apply_tp_plan(hf, self.tp)
        self.stage = stage
        """``--pp``: (s, P), this rank holds pipeline stage s's modules only (``hf_stage``); (0, 1) is the whole model."""
        if stage[1] > 1:
            cut_to_stage(hf, stage)
        self.routing: list[Routing] = []
        """Each MoE layer's routing in the last forward, in layer order (empty for a dense model)."""
        if self.cfg.is_moe:
            for layer in self.layers:
                layer.mlp.gate.register_forward_hook(self._record_routing)

    def _record_routing(self, _gate: nn.Module, _args: Any, out: tuple[torch.Tensor, ...]) -> None:
        """transformers' router returns (logits [T, E], top-k weights, top-k experts [T, k])."""
        self.routing.append(Routing(out[0], out[2]))

    @property
    def layers(self) -> nn.ModuleList:
        return self.hf.model.layers

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, layout: Any, *,
                layer_context: LayerContext | None = None) -> torch.Tensor:
        self.routing = []  # a recomputed layer (--recompute full) appends again in backward, after the loss read it
        if self.stage[1] > 1:  # tokens or the previous stage's [T, h] -> [T, h], or logits on the last stage
            return stage_forward(self.hf, tokens, positions, layout)
        with _layer_hooks(self.layers, layer_context):
            out = self.hf(input_ids=tokens[None], position_ids=positions[None], use_cache=False,
                          **{LAYOUT_KWARG: layout})
        return out.logits[0]                                                    # [T, V]

    def save_hf(self, out_dir: str | Path) -> None:
        """``save_pretrained`` with the default attention, so the directory loads where hdp is not installed."""
        self.hf.set_attn_implementation("sdpa")
        try:
            with _quiet_transformers():
                self.hf.save_pretrained(str(out_dir), safe_serialization=True)
        finally:
            self.hf.set_attn_implementation(ATTN_IMPLEMENTATION)


@contextlib.contextmanager
def _layer_hooks(layers: nn.ModuleList, layer_context: LayerContext | None):
    """Run decoder layer i inside ``layer_context(i)`` (activation offloading) with module hooks, not patches."""
    if layer_context is None:
        yield
        return
    open_: list[contextlib.ExitStack] = []
    handles = []
    for i, layer in enumerate(layers):
        def enter(_m, _args, i=i):
            stack = contextlib.ExitStack()
            stack.enter_context(layer_context(i))
            open_.append(stack)

        def leave(_m, _args, _out):
            open_.pop().close()

        handles.append(layer.register_forward_pre_hook(enter))
        handles.append(layer.register_forward_hook(leave))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        while open_:  # a layer raised: close what it opened
            open_.pop().close()


def _experts_kwargs(config: Any, dtype: torch.dtype) -> dict[str, str]:
    """transformers' looped experts for a float64 MoE model: its default grouped GEMM has no float64."""
    moe = getattr(config, "model_type", None) in MOE_FAMILIES
    return {"experts_implementation": "eager"} if moe and dtype == torch.float64 else {}


def build_hf_model(source: str | Any, *, dtype: torch.dtype, device: torch.device, seed: int,
                   max_seq_len: int = 1 << 30, recompute: bool = False,
                   tp: TensorParallel | None = None, stage: tuple[int, int] = (0, 1)) -> HFCausalLM:
    """Load ``source`` (a directory, or a config object) with hdp attention; weights if present, else random.

    A random init is seeded with ``seed`` alone, so every rank builds identical weights without a broadcast.
    ``tp``: the whole model is loaded, then cut to this rank's shards (``hf_parallel.apply_tp_plan``);
    ``stage`` (s, P): the whole model is loaded, then cut to stage s's modules (``hf_stage.cut_to_stage``).
    """
    from transformers import AutoModelForCausalLM

    register()
    if isinstance(source, (str, Path)):
        config = load_hf_config(str(source), max_seq_len)
        has_weights = any((Path(source) / f).is_file() for f in WEIGHT_FILES)
        name = f"hf:{Path(source).name}"
    else:
        config, has_weights, name = source, False, f"hf:{source.model_type}"
        check_supported(config, max_seq_len)
    if has_weights:
        try:
            with _quiet_transformers():
                hf = AutoModelForCausalLM.from_pretrained(str(source), local_files_only=True, dtype=dtype,
                                                          attn_implementation=ATTN_IMPLEMENTATION,
                                                          **_experts_kwargs(config, dtype))
        except Exception as e:  # noqa: BLE001 - safetensors, torch and transformers each raise their own types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"--hf-model {str(source)!r}: cannot load its weights ({type(e).__name__}: {first[:200]})") from None
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            hf = AutoModelForCausalLM.from_config(config, attn_implementation=ATTN_IMPLEMENTATION, dtype=dtype,
                                                  **_experts_kwargs(config, dtype))
    hf.train()
    if recompute:  # transformers' own per-layer checkpointing, non-reentrant like the built-in model's
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if stage[1] > 1:  # cut on the host first: the device only ever holds this stage's modules
        return HFCausalLM(hf, name, tp, stage).to(device)
    return HFCausalLM(hf.to(device), name, tp)


def gather_hf(model: nn.Module) -> nn.Module:
    """The single-process ``HFCausalLM`` (on the host) holding ``model``'s TP shards all-gathered: what
    ``--export-hf`` writes. Collective over the TP group; ``model`` itself when it is not sharded."""
    from transformers import AutoModelForCausalLM

    tp = getattr(model, "tp", None)
    if tp is None:
        return model
    full = gather_parameters([(n[len("hf."):], p) for n, p in model.named_parameters()], tp)
    with _quiet_transformers():
        hf = AutoModelForCausalLM.from_config(model.hf.config, dtype=next(model.parameters()).dtype)
    missing, unexpected = hf.load_state_dict({k: v.cpu() for k, v in full.items()}, strict=False)
    tied = {"lm_head.weight"} if model.hf.config.tie_word_embeddings else set()
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"gathered HF model: missing {missing}, unexpected {unexpected}")
    return HFCausalLM(hf, model.cfg.name)
