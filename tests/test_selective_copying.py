"""Smoke test of the selective-copying benchmark: the task generator and a tiny training run."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "selective_copying.py"


@pytest.fixture(scope="module")
def sc():
    spec = importlib.util.spec_from_file_location("selective_copying_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_generator_invariants(sc):
    cfg = sc.TaskConfig(seq_len=24, n_copy=5, n_symbols=4)
    inputs, targets = sc.make_batch(cfg, 50, torch.Generator().manual_seed(0))
    assert inputs.shape == (50, 29) and targets.shape == (50, 5)
    assert cfg.vocab_size == 6 and cfg.marker == 5
    # the markers fill exactly the last n_copy positions
    assert (inputs[:, 24:] == cfg.marker).all() and not (inputs[:, :24] == cfg.marker).any()
    # the body holds n_copy data tokens among blanks; read in order they are the answers
    body = inputs[:, :24]
    assert ((body == sc.BLANK) | ((body >= 1) & (body <= 4))).all()
    assert ((targets >= 1) & (targets <= 4)).all()
    for row, target in zip(body, targets, strict=True):
        assert row[row != sc.BLANK].tolist() == target.tolist()
    # positions vary across sequences and the generator is deterministic given a seed
    assert len({tuple((row != sc.BLANK).nonzero().flatten().tolist()) for row in body}) > 40
    again, _ = sc.make_batch(cfg, 50, torch.Generator().manual_seed(0))
    assert torch.equal(inputs, again)
    with pytest.raises(ValueError):
        sc.make_batch(sc.TaskConfig(seq_len=4, n_copy=5), 1)


@pytest.mark.parametrize("selective", [True, False])
def test_tiny_training_lowers_loss_on_a_fixed_batch(sc, selective):
    torch.manual_seed(0)
    cfg = sc.TaskConfig(seq_len=12, n_copy=4, n_symbols=4)
    model = sc.CopyModel(cfg, d_model=16, n_blocks=1, d_state=4, selective=selective)
    s6s = [m for m in model.modules() if type(m).__name__ == "S6"]
    assert len(s6s) == 3 and all(m.selective == selective for m in s6s)  # token scan + 2 channel scans
    inputs, targets = sc.make_batch(cfg, 16, torch.Generator().manual_seed(1))
    assert model(inputs).shape == (16, 16, cfg.vocab_size)
    opt = sc.make_optimizer(model, lr=1e-2, weight_decay=0.1)
    losses = []
    for _ in range(15):
        loss = sc.loss_fn(model, inputs, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]
    acc, seq_acc, per_index = sc.evaluate(model, inputs, targets)
    assert 0 <= seq_acc <= acc <= 1 and len(per_index) == 4


def test_main_runs_both_variants(sc, tmp_path):
    out = tmp_path / "r.json"
    result = sc.main(["--seq-len", "12", "--n-copy", "4", "--steps", "3", "--batch", "8", "--d-model", "16",
                      "--n-blocks", "1", "--d-state", "4", "--eval-size", "20", "--log-every", "0",
                      "--json", str(out)])  # fmt: skip
    assert out.exists()
    rows = {r["model"]: r for r in result["results"]}
    assert set(rows) == {"selective", "non-selective"}
    assert rows["selective"]["params"] > rows["non-selective"]["params"]
    assert all(0 <= r["token_accuracy"] <= 1 and r["steps"] == 3 for r in rows.values())
