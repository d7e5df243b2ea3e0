"""Attention between one query piece and one key piece of a zig-zag split, by the fastest exact kernel.

Between zig-zag pieces p (queries) and r (keys) causality is all or nothing, except on the diagonal:
r < p is fully visible, r == p is causal (same piece: same length, same positions), r > p is fully
masked and never computed. So a ring step needs only two kernel shapes, "full" and "causal", and
those are exactly what fused SDPA kernels provide, with the log-sum-exp the merge needs, and a
backward that accepts the *final* output and lse (the ring backward's recomputation).

Kernels, chosen by the tensors' device and dtype:
* CPU: ``aten._scaled_dot_product_flash_attention_for_cpu`` and its backward (all float dtypes).
* CUDA, fp16/bf16: ``aten._scaled_dot_product_flash_attention`` and its backward, called the way
  PyTorch's own derivative formula calls it: ``cum_seq_q``/``cum_seq_k`` undefined (``None``), the
  forward's ``rng_state``/``unused`` as the philox seed/offset. A *defined* cu_seqlens tensor (even a
  zero-length one) sends the backward down the variable-length path, which rejects 4-D inputs.
  ``kernel="matmul"`` gives the exact reference to compare with (tests/gpu).
* Anything else: the exact matmul kernel of ``matmul_attention.py`` (O(Nq*Nk) memory).

Shapes: q [Nq, Hq, D], k/v [Nk, Hkv, D]; out [Nq, Hq, D] and lse [Hq, Nq] in the accumulation dtype;
dk/dv per kv head. kv heads are expanded here only (the fused kernels have no GQA).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import torch

from hdp.runtime.attention.matmul_attention import acc_dtype, block_backward, block_forward, expand_kv, reduce_kv

Kernel = Literal["auto", "cpu_flash", "cuda_flash", "matmul"]


def choose_kernel(q: torch.Tensor) -> Kernel:
    if q.device.type == "cpu" and hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
        return "cpu_flash"
    head_dim = q.shape[-1]
    if q.device.type == "cuda" and q.dtype in (torch.float16, torch.bfloat16) and head_dim % 8 == 0 and head_dim <= 256:
        return "cuda_flash"
    return "matmul"


FLASH_FORWARD = torch.ops.aten._scaled_dot_product_flash_attention
FLASH_BACKWARD = torch.ops.aten._scaled_dot_product_flash_attention_backward
"""The CUDA flash ops, named once (tests wrap them to see the arguments; the meta kernels run them on CPU)."""


@lru_cache(maxsize=None)
def flash_rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The philox ``(seed, offset)`` tensors the flash forward returns on ``device`` without dropout.

    The ring backward recomputes each pair from the *final* out/lse, so the pair's own forward
    outputs are gone; without dropout they carry no randomness, and the backward only needs them in
    the form the forward returns them (shape, dtype, device). One 1-token forward per device, once.
    """
    x = torch.zeros(1, 1, 1, 8, dtype=torch.bfloat16, device=device)
    outputs = FLASH_FORWARD(x, x, x, 0.0, False, False)
    return outputs[6], outputs[7]


def _mask_positions(nq: int, nk: int, causal: bool, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions that make ``q_pos >= k_pos`` the wanted mask: the diagonal, or everything visible."""
    k_pos = torch.arange(nk, device=device)
    q_pos = torch.arange(nq, device=device) if causal else torch.full((nq,), nk, device=device)
    return q_pos, k_pos


def _bhld(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    return expand_kv(x, num_heads).transpose(0, 1).unsqueeze(0)  # [N, H, D] -> [1, H, N, D]


def pair_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float, kernel: Kernel = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, lse)`` of queries q over keys k/v, causal (square, same positions) or fully visible."""
    if causal and q.shape[0] != k.shape[0]:
        raise ValueError(f"a causal pair must be square, got {q.shape[0]} queries and {k.shape[0]} keys")
    kernel = choose_kernel(q) if kernel == "auto" else kernel
    dt, hq = acc_dtype(q.dtype), q.shape[1]
    if kernel == "matmul":
        return block_forward(q, k, v, *_mask_positions(q.shape[0], k.shape[0], causal, q.device), scale)
    if kernel == "cpu_flash":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            _bhld(q, hq), _bhld(k, hq), _bhld(v, hq), 0.0, causal, scale=scale)[:2]
    else:
        out, lse = FLASH_FORWARD(_bhld(q, hq), _bhld(k, hq), _bhld(v, hq), 0.0, causal, False, scale=scale)[:2]
    return out[0].transpose(0, 1).to(dt), lse[0].to(dt)


def pair_backward(
    dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    causal: bool, scale: float, kernel: Kernel = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This pair's share of dq, dk, dv given the *final* out/lse of the query rows (see matmul_attention.block_backward)."""
    kernel = choose_kernel(q) if kernel == "auto" else kernel
    dt, hq, hkv = acc_dtype(q.dtype), q.shape[1], k.shape[1]
    if kernel == "matmul":
        q_pos, k_pos = _mask_positions(q.shape[0], k.shape[0], causal, q.device)
        return block_backward(dout, q, k, v, out, lse, q_pos, k_pos, scale)
    args = (_bhld(dout.to(q.dtype), hq), _bhld(q, hq), _bhld(k, hq), _bhld(v, hq), _bhld(out.to(q.dtype), hq))
    if kernel == "cpu_flash":
        lse_in = lse.unsqueeze(0).contiguous()
        dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            *args, lse_in, 0.0, causal, scale=scale)
    else:
        lse_in = lse.to(torch.float32).unsqueeze(0).contiguous()
        seed, offset = flash_rng_state(q.device)
        # cum_seq_q/k None: the dense (batch, heads, tokens) kernel, as the forward returned them.
        dq, dk, dv = FLASH_BACKWARD(*args, lse_in, None, None, q.shape[0], k.shape[0], 0.0, causal, seed, offset,
                                    scale=scale)
    to_nhd = lambda x: x[0].transpose(0, 1).to(dt)  # noqa: E731 - [1, H, N, D] -> [N, H, D]
    return to_nhd(dq), reduce_kv(to_nhd(dk), hkv), reduce_kv(to_nhd(dv), hkv)
