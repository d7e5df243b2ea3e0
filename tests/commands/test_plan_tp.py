"""``hdp plan --tp T``: an HDP rank of T GPUs holds 1/T of the model and its activations, so the
planner's capacity grows with T and a model that does not fit one GPU plans at T > 1."""

from __future__ import annotations

import json

from tests.run_cli import run_main


def _plan(capsys, *argv: str) -> tuple[int, dict | str]:
    code, out, err = run_main(capsys, "plan", "--json", "--tokens", "1048576", "--max-len", "65536", *argv)
    return code, (json.loads(out) if code == 0 else err)


def test_tp_raises_capacity_and_the_cost_model_sees_it(capsys):
    code1, one = _plan(capsys, "--model", "llama-7b", "--ranks", "64")
    code2, two = _plan(capsys, "--model", "llama-7b", "--ranks", "64", "--tp", "2")
    assert code1 == code2 == 0
    assert two["capacity_tokens"] > 1.5 * one["capacity_tokens"]  # states and activations halve per GPU


def test_a_model_too_big_for_one_gpu_plans_with_tp(capsys):
    code, err = _plan(capsys, "--model", "llama-30b", "--ranks", "64")
    assert code == 2 and "tp/pp" in err
    code, info = _plan(capsys, "--model", "llama-30b", "--ranks", "64", "--tp", "4")
    assert code == 0 and info["capacity_tokens"] > 0


def test_tp_that_does_not_divide_the_heads_is_one_line(capsys):
    code, err = _plan(capsys, "--model", "llama-7b", "--ranks", "64", "--tp", "3")
    assert code == 2 and "does not divide" in err and len(err.strip().splitlines()) == 1
