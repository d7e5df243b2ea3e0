"""Hugging Face causal LMs trained by hdp equal plain transformers on the same batch.

Tiny random Llama, Qwen2 (q/k/v biases, tied embeddings), Qwen3 (q/k norms, head_dim decoupled from
the width) and Mistral configs, built here, GQA in all. One hdp step in float64 on 3 ranks — two rings
of 3 (odd lengths, uneven pieces, different member orders) beside whole documents, uneven
micro-batch counts — against (a) hdp on 1 rank, every sequence whole: 1e-9 relative, and (b) the
plain transformers model (attn_implementation="sdpa") in one process, each document its own
sequence, transformers' own forward: loss 1e-12 relative, each gradient within 1e-10 of its largest
entry. (b) can be this tight because both sides run transformers' own modelling code, whose float32
RoPE tables and RMSNorm round identically; only the attention differs (measured: loss <= 1.6e-16,
gradients <= 4e-16 of their largest entry). The built-in model against transformers, where that
float32 rounding differs, is test_hf_llama.py.
"""

from __future__ import annotations

import os
import random

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config  # noqa: E402

from hdp.data.batches import GlobalBatch, Slice  # noqa: E402
from hdp.data.corpus import BytesCorpus  # noqa: E402
from hdp.plan.zigzag import member_segments  # noqa: E402
from hdp.plan.types import MicroBatch, Plan, RankPlan, Ring, Segment, Sequence  # noqa: E402
from hdp.runtime.model.hf_model import build_hf_model  # noqa: E402
from hdp.runtime.train.step import build_optimizer, train_step  # noqa: E402
from tests.runtime.test_hf_llama import assert_grads_close  # noqa: E402
from tests.runtime.test_train_step import free_port  # noqa: E402

pytestmark = pytest.mark.dist
LENGTHS = [23, 6, 9, 4, 14]
SEED = 5
COMMON = dict(vocab_size=256, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=64,
              initializer_range=0.25)  # large weights: sharp attention, so a wrong position or mask shows


def configs() -> dict:
    return {
        "llama": LlamaConfig(**COMMON, rope_theta=1000.0, tie_word_embeddings=False),
        "qwen2": Qwen2Config(**COMMON, tie_word_embeddings=True),
        "qwen3": Qwen3Config(**COMMON, head_dim=16, tie_word_embeddings=False),
        "mistral": MistralConfig(**COMMON, sliding_window=None, tie_word_embeddings=False),
    }


def three_rank_plan() -> Plan:
    """Ring 0: sequence 0 (23) on ranks (0, 1, 2); ring 1: sequence 4 (14) on ranks (2, 0, 1)."""
    ring0 = {r: member_segments(0, 23, 3, p) for p, r in enumerate((0, 1, 2))}
    ring1 = {r: member_segments(4, 14, 3, p) for p, r in enumerate((2, 0, 1))}
    mb = lambda segs, rings=(): MicroBatch(tuple(segs), tuple(rings), 0.0, 40)  # noqa: E731
    ranks = [
        [mb([Segment(1, 0, 6), *ring0[0]], [0]), mb([*ring1[0], Segment(3, 0, 4)], [1])],
        [mb(ring0[1], [0]), mb([Segment(2, 0, 9)]), mb(ring1[1], [1])],
        [mb(ring0[2], [0]), mb(ring1[2], [1])],
    ]
    return Plan("test", 3, 40, tuple(Sequence(i, n) for i, n in enumerate(LENGTHS)),
                (Ring(0, 0, (0, 1, 2)), Ring(1, 4, (2, 0, 1))),
                tuple(RankPlan(r, tuple(m)) for r, m in enumerate(ranks)))


def one_rank_plan() -> Plan:
    """Every sequence whole, several packed per micro-batch (positions restart at each document)."""
    packs = [(0, 1, 2), (3, 4)]
    whole = [MicroBatch(tuple(Segment(i, 0, LENGTHS[i]) for i in p), (), 0.0, 40) for p in packs]
    return Plan("test", 1, 40, tuple(Sequence(i, n) for i, n in enumerate(LENGTHS)), (), (RankPlan(0, tuple(whole)),))


def batch() -> GlobalBatch:
    rng = random.Random(11)
    docs = tuple(bytes(rng.randrange(256) for _ in range(n)) for n in LENGTHS)
    return GlobalBatch(BytesCorpus(docs), tuple(Slice(i, 0, n) for i, n in enumerate(LENGTHS)))


def hdp_step(config, plan: Plan, rank: int) -> dict:
    """One hdp step (no clipping) on this rank; the reduced gradients (zero 0: the whole flat buffer)."""
    model = build_hf_model(config, dtype=torch.float64, device=torch.device("cpu"), seed=SEED)
    opt = build_optimizer(model, 1e-3, zero=0)
    res = train_step(model, opt, plan, batch(), rank=rank, group=None, device=torch.device("cpu"),
                     timeout_s=30, max_grad_norm=0.0)
    grads = {e.name.removeprefix("hf."): opt.grad_shard[e.offset:e.offset + e.numel].view(e.shape).clone()
             for e in opt.layout}
    return {"loss": res.loss, "grads": grads}


def _rank(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=3)
    out = {name: hdp_step(cfg, three_rank_plan(), rank) for name, cfg in configs().items()}
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def transformers_reference(config, weights: dict) -> dict:
    """Plain transformers, sdpa attention, each document alone: no hdp code on this path."""
    hf = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float64)
    hf.load_state_dict(weights, strict=True)
    b = batch()
    total = torch.zeros((), dtype=torch.float64)
    for i, n in enumerate(LENGTHS):
        ids = torch.tensor(list(b.read(i, 0, n)))
        logits = hf(input_ids=ids[None], position_ids=torch.arange(n)[None]).logits[0]
        total = total + F.cross_entropy(logits[:-1], ids[1:], reduction="sum")
    loss = total / sum(n - 1 for n in LENGTHS)
    loss.backward()
    return {"loss": float(loss.detach()), "grads": {n: p.grad.clone() for n, p in hf.named_parameters()}}


@pytest.mark.timeout(240)
def test_hf_models_on_3_ranks_with_rings_equal_1_rank_and_plain_transformers(tmp_path):
    mp.start_processes(_rank, args=(free_port(), str(tmp_path)), nprocs=3, join=True, start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(3)]
    for name, cfg in configs().items():
        one = hdp_step(cfg, one_rank_plan(), 0)
        init = build_hf_model(cfg, dtype=torch.float64, device=torch.device("cpu"), seed=SEED).hf.state_dict()
        ref = transformers_reference(cfg, init)
        for r, got in enumerate(ranks):
            got = got[name]
            assert got["loss"] == pytest.approx(one["loss"], rel=1e-9), f"{name} rank {r}: 3 ranks vs 1"
            assert_grads_close(got["grads"], one["grads"], rtol=1e-9)
        assert one["loss"] == pytest.approx(ref["loss"], rel=1e-12), f"{name}: hdp vs transformers"
        assert_grads_close(one["grads"], ref["grads"], rtol=1e-10)


@pytest.mark.timeout(60)
def test_offloaded_hf_layers_give_bit_identical_gradients():
    """Layer i of a transformers model runs inside the offload hook for layer i (module hooks, no patching)."""
    from hdp.runtime.offload.activations import ActivationOffloader
    from hdp.runtime.train.step import forward_backward

    cfg = configs()["llama"]
    cfg.num_hidden_layers = 4  # offloading skips the first and last layer: leave some in the middle
    grads = []
    for layers in (None, 2):  # 2: both middle layers
        model = build_hf_model(cfg, dtype=torch.float64, device=torch.device("cpu"), seed=SEED)
        offload = None if layers is None else ActivationOffloader(torch.device("cpu"), 4, model.parameters())
        forward_backward(model, one_rank_plan(), batch(), 0, torch.device("cpu"), timeout_s=10, offload=offload,
                         offload_layers=layers)
        assert offload is None or offload.offloaded_bytes > 0
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        assert torch.equal(g, grads[1][name]), name


@pytest.mark.timeout(30)
def test_the_registered_mask_function_is_the_one_transformers_calls():
    """A padding mask or a KV cache reaches hdp's mask function and is refused, not silently dropped."""
    from hdp.runtime.attention.dispatch import MicroBatchAttention
    from hdp.runtime.attention.layout import AttentionLayout, Span

    model = build_hf_model(configs()["llama"], dtype=torch.float64, device=torch.device("cpu"), seed=SEED)
    ids = torch.arange(6)[None]
    span = Span(0, 0, 6, 0)
    layout = MicroBatchAttention(AttentionLayout(0, 0, 6, (span,), (span,), ()))
    padded = torch.tensor([[1, 1, 1, 1, 0, 0]])
    with pytest.raises(ValueError, match="without padding"):
        model.hf(input_ids=ids, attention_mask=padded, hdp_layout=layout, use_cache=False)
    first = model.hf(input_ids=ids, hdp_layout=layout, use_cache=True)  # a prefill is plain causal attention
    with pytest.raises(ValueError, match="KV cache"):
        model.hf(input_ids=ids[:, :1], cache=first.cache, hdp_layout=layout, use_cache=True)
    with pytest.raises(ValueError, match="needs the micro-batch layout"):
        model.hf(input_ids=ids, use_cache=False)
