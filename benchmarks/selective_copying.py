"""Selective copying (Mamba, Gu & Dao 2023, section 4.1.1): selective vs non-selective S6.

    PYTHONPATH=src python benchmarks/selective_copying.py [--seq-len 64] [--steps 600] [--seed 0] [--json out.json]

The task (Hyena's / Mamba's construction): a sequence of ``seq_len`` blank tokens holds
``n_copy`` data tokens (drawn from ``n_symbols`` symbols, repeats allowed) at random positions;
``n_copy`` marker tokens are appended. At the marker positions the model must output the data
tokens in their order of appearance. Vocabulary: 0 = blank, 1..n_symbols = data, n_symbols + 1
= marker. Because the spacing is random, a time-invariant (LTI) model cannot know which
positions to copy from; a selective one can filter the blanks out by content.

Model: token embedding -> MambaMixer (unidirectional token mixers; channel mixers in the
MLP-Mixer transposed construction, ``ChannelMixer(d_features=seq_len + n_copy)``, unless
``--no-channel-mixer``) -> LayerNorm -> linear to the vocabulary. Both variants are trained with
the same recipe (AdamW, fresh random batches each step, cosine decay, loss on the answer
positions only); the non-selective one builds every S6 with ``selective=False`` (delta, B and C
learned constants). Token accuracy is measured on a held-out set of fixed sequences.

The defaults (L = 64, 600 steps) are the CPU budget recorded in benchmarks/README.md; the paper
uses L = 4096, and ``--seq-len 256`` is closer to it at about 4x the cost per step.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass

# Idle OpenMP workers sleep instead of spinning. Set before torch and numba load their OpenMP
# runtimes: on a busy machine the spinning workers of numba's scan kernel and of torch's
# intra-op pool otherwise starve each other (measured: 10x slower training steps).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from mambamixer.layers.channel_mixer import ChannelMixer  # noqa: E402
from mambamixer.layers.mamba_mixer import MambaMixer  # noqa: E402
from mambamixer.layers.token_mixer import TokenMixer  # noqa: E402

BLANK = 0


@dataclass
class TaskConfig:
    seq_len: int = 64  # positions holding blanks and data tokens (the markers come after)
    n_copy: int = 16  # data tokens to copy (= markers appended)
    n_symbols: int = 8  # data symbols: token ids 1..n_symbols

    @property
    def marker(self) -> int:
        return self.n_symbols + 1

    @property
    def vocab_size(self) -> int:
        return self.n_symbols + 2

    @property
    def total_len(self) -> int:
        return self.seq_len + self.n_copy


def make_batch(cfg: TaskConfig, batch: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """inputs (batch, seq_len + n_copy) token ids, targets (batch, n_copy): the data tokens in order."""
    if cfg.n_copy > cfg.seq_len:
        raise ValueError(f"n_copy ({cfg.n_copy}) must be <= seq_len ({cfg.seq_len})")
    positions = torch.rand(batch, cfg.seq_len, generator=generator).argsort(dim=1)[:, : cfg.n_copy]
    positions = positions.sort(dim=1).values
    data = torch.randint(1, cfg.n_symbols + 1, (batch, cfg.n_copy), generator=generator)
    inputs = torch.full((batch, cfg.total_len), BLANK, dtype=torch.long)
    inputs.scatter_(1, positions, data)
    inputs[:, cfg.seq_len :] = cfg.marker
    return inputs, data


class CopyModel(nn.Module):
    """Embedding -> MambaMixer -> LayerNorm -> linear head; logits (batch, length, vocab)."""

    def __init__(self, cfg: TaskConfig, d_model: int = 64, n_blocks: int = 2, d_state: int = 16,
                 selective: bool = True, channel_mixer: bool = True) -> None:  # fmt: skip
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, d_model)
        self.mixer = MambaMixer(
            n_blocks,
            d_model,
            token_mixer=lambda: TokenMixer(d_model, d_state=d_state, selective=selective),
            channel_mixer=(lambda: ChannelMixer(cfg.total_len, d_state=d_state, selective=selective))
            if channel_mixer
            else None,
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, cfg.vocab_size)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(self.norm(self.mixer(self.embed(tokens))))


def answer_logits(model: nn.Module, inputs: Tensor, n_copy: int) -> Tensor:
    return model(inputs)[:, -n_copy:]


def loss_fn(model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
    logits = answer_logits(model, inputs, targets.shape[1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW; 1-D parameters (biases, norms, D, dt_bias) and ``_no_weight_decay`` ones are exempt."""
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.dim() < 2 or getattr(p, "_no_weight_decay", False) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98))


@torch.no_grad()
def evaluate(model: nn.Module, inputs: Tensor, targets: Tensor, batch: int = 250) -> tuple[float, float, list[float]]:
    """(token accuracy, sequence accuracy, accuracy of each answer index) on the answer positions."""
    model.eval()
    hits = []
    for i in range(0, len(inputs), batch):
        pred = answer_logits(model, inputs[i : i + batch], targets.shape[1]).argmax(-1)
        hits.append(pred == targets[i : i + batch])
    model.train()
    hit = torch.cat(hits).float()
    return hit.mean().item(), hit.all(dim=1).float().mean().item(), hit.mean(dim=0).tolist()


@dataclass
class Recipe:
    steps: int = 600
    batch: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.1
    warmup: int = 100
    grad_clip: float = 1.0


def train(model: nn.Module, cfg: TaskConfig, recipe: Recipe, seed: int, log_every: int = 0,
          eval_set: tuple[Tensor, Tensor] | None = None, name: str = "") -> list[tuple[int, float]]:  # fmt: skip
    """Train on fresh random batches; returns [(step, loss)] at each log point."""
    g = torch.Generator().manual_seed(seed + 1)
    opt = make_optimizer(model, recipe.lr, recipe.weight_decay)

    def lr_at(step: int) -> float:
        if step < recipe.warmup:
            return (step + 1) / recipe.warmup
        progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    history, running, start = [], 0.0, time.perf_counter()
    for step in range(recipe.steps):
        inputs, targets = make_batch(cfg, recipe.batch, g)
        loss = loss_fn(model, inputs, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if recipe.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        opt.step()
        sched.step()
        running += loss.item()
        if log_every and (step + 1) % log_every == 0:
            msg = f"  [{name}] step {step + 1:5d}  {time.perf_counter() - start:6.0f}s  loss {running / log_every:.4f}"
            if eval_set is not None:
                acc, _, per_index = evaluate(model, eval_set[0][:500], eval_set[1][:500])
                msg += f"  val acc {acc:.4f}  by answer index " + " ".join(f"{a:.2f}" for a in per_index)
            print(msg, flush=True)
            history.append((step + 1, running / log_every))
            running = 0.0
    return history


def run_variant(name: str, selective: bool, args: argparse.Namespace, cfg: TaskConfig,
                eval_set: tuple[Tensor, Tensor]) -> dict:  # fmt: skip
    torch.manual_seed(args.seed)
    model = CopyModel(cfg, args.d_model, args.n_blocks, args.d_state, selective, not args.no_channel_mixer)
    recipe = Recipe(steps=args.steps, batch=args.batch, lr=args.lr, weight_decay=args.weight_decay,
                    warmup=args.warmup)  # fmt: skip
    start = time.perf_counter()
    train(model, cfg, recipe, args.seed, args.log_every, eval_set, name)
    seconds = time.perf_counter() - start
    token_acc, seq_acc, per_index = evaluate(model, *eval_set)
    return {
        "model": name,
        "selective": selective,
        "params": sum(p.numel() for p in model.parameters()),
        "token_accuracy": token_acc,
        "sequence_accuracy": seq_acc,
        "accuracy_per_answer_index": [round(a, 4) for a in per_index],
        "train_seconds": seconds,
        "steps": recipe.steps,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq-len", type=int, default=64, help="blank/data positions before the markers")
    p.add_argument("--n-copy", type=int, default=16, help="data tokens to copy")
    p.add_argument("--n-symbols", type=int, default=8, help="data vocabulary size")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--n-blocks", type=int, default=2)
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--no-channel-mixer", action="store_true", help="token-mixer-only blocks")
    p.add_argument("--eval-size", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave torch's default)")
    p.add_argument("--variants", default="selective,non-selective", help="comma-separated subset to run")
    p.add_argument("--log-every", type=int, default=100, help="0 = quiet")
    p.add_argument("--json", help="write the results to this file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = TaskConfig(args.seq_len, args.n_copy, args.n_symbols)
    eval_set = make_batch(cfg, args.eval_size, torch.Generator().manual_seed(10_000 + args.seed))
    rows = []
    for name in args.variants.split(","):
        if name not in ("selective", "non-selective"):
            p.error(f"unknown variant {name!r}")
        rows.append(run_variant(name, name == "selective", args, cfg, eval_set))

    print(f"\nselective copying: seq_len {cfg.seq_len} + {cfg.n_copy} markers, {cfg.n_symbols} symbols, "
          f"{args.steps} steps x batch {args.batch}, eval on {args.eval_size} held-out sequences")  # fmt: skip
    print(f"{'model':<14} {'params':>8} {'token acc':>10} {'seq acc':>8} {'seconds':>8}")
    for r in rows:
        print(f"{r['model']:<14} {r['params']:>8d} {r['token_accuracy']:>10.4f} {r['sequence_accuracy']:>8.4f} "
              f"{r['train_seconds']:>8.1f}")  # fmt: skip
    result = {
        "task": asdict(cfg),
        "args": vars(args),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "results": rows,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
