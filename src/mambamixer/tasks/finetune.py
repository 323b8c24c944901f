"""``classify --init``: start a run from trained weights, re-creating the classifier when the class
count differs and, with ``--freeze-backbone``, training it alone.

    source = load_init("runs/digits-vim2")                  # a run, a checkpoint or a saved-model folder
    net, notes = source.build(num_classes=3, in_chans=1, img_size=28)   # the source's weights, a new head
    trainable = freeze_backbone(net)                         # only the final Linear trains
    net, record = source.start(3, 1, 28, {}, freeze=True, announce=True)   # both, for run_classify

The source is a run folder (its ``checkpoint/``, as ``evaluate`` and ``predict`` pick it), a
checkpoint folder, or a folder written by ``save_pretrained`` (``config.json`` and
``model.safetensors``; a path to that ``.safetensors`` file works too). Weights are read with
safetensors only. The model is rebuilt from the source's config (its size and ``--set`` overrides;
new ``--set`` values win, e.g. a drop-path rate for fine-tuning) with the new data's channels and
image size; every tensor must then match the source's shape, except the classifier (re-created
when the class count differs) and the input convolution when the channel count differs (timm's
``adapt_input_conv`` rule, :func:`adapt_input_conv`). docs/vision.md, "Fine-tuning".
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from mambamixer.io import load_state_dict
from mambamixer.models.pretrained import WEIGHTS_NAME
from mambamixer.models.registry import create_model, model_task
from mambamixer.tasks.common import find_checkpoint
from mambamixer.training.checkpoint import RUN_NAME, read_config, read_run


@dataclass
class InitSource:
    """Trained weights to start from: where they are, the model that wrote them and its config."""

    given: str  # the path as the user gave it
    weights: Path  # the safetensors file
    model_name: str
    config: dict[str, Any]  # the saved model's config dataclass, as a dict
    model_class: str | None
    run: dict[str, Any] | None  # run.json of a run or checkpoint folder; None for a saved model

    @property
    def num_classes(self) -> int:
        return int(self.config.get("num_classes", 0))

    @property
    def in_chans(self) -> int:
        return int(self.config.get("in_chans", 0))

    def build(self, num_classes: int, in_chans: int, img_size: int,
              overrides: dict[str, Any] | None = None) -> tuple[nn.Module, list[str]]:  # fmt: skip
        """The model for data of ``num_classes`` classes, ``in_chans`` channels and ``img_size`` pixels,
        holding the source's weights; and the lines that say what was re-created or adapted."""
        config = {**self.config, **(overrides or {}), "in_chans": in_chans}
        if "img_size" in config:
            config["img_size"] = img_size
        try:
            net = create_model(self.model_name, **config)
        except TypeError as err:
            held = f"a {self.model_class}" if self.model_class else "a model"
            raise ValueError(f"--init {self.given} holds {held} whose config does not fit model {self.model_name!r}: "
                             f"{err}") from err
        if self.model_class not in (None, type(net).__name__):
            raise ValueError(f"--init {self.given} holds a {self.model_class}, but model {self.model_name!r} builds a "
                             f"{type(net).__name__}")
        notes = load_matching(net, load_state_dict(self.weights), f"--init {self.given}")
        if num_classes != self.num_classes:
            net.reset_classifier(num_classes)
            notes.append(f"head re-created: {self.num_classes} -> {num_classes} classes ({net.classifier_name()}, "
                         f"freshly initialised)")
        return net, notes

    def start(self, num_classes: int, in_chans: int, img_size: int, overrides: dict[str, Any] | None,
              freeze: bool, announce: bool) -> tuple[nn.Module, dict[str, Any]]:  # fmt: skip
        """:meth:`build`, then (``freeze``) :func:`freeze_backbone`; prints what changed when
        ``announce``. Returns the model and run.json's ``init`` record."""
        net, notes = self.build(num_classes, in_chans, img_size, overrides)
        total = sum(p.numel() for p in net.parameters())
        trainable = freeze_backbone(net) if freeze else total
        if freeze:
            notes.append(f"backbone frozen: training {trainable:,} of {total:,} parameters ({net.classifier_name()})")
        if announce:
            print(f"starting from {self.weights} ({self.model_name}, {self.num_classes} classes)")
            for line in notes:
                print(line)
        return net, {**self.record(), "freeze_backbone": freeze, "trainable_params": trainable, "notes": notes}

    def record(self) -> dict[str, Any]:
        """What run.json keeps of the source."""
        digest = hashlib.sha256(self.weights.read_bytes()).hexdigest()
        run = self.run or {}
        return {"from": str(Path(self.given).expanduser().resolve()), "weights": str(self.weights.resolve()),
                "weights_sha256": digest, "model_name": self.model_name, "num_classes": self.num_classes,
                "in_chans": self.in_chans, "data": run.get("data"), "classes": run.get("classes")}


def load_init(path: str | os.PathLike, model: str | None = None) -> InitSource:
    """Find and check the weights of ``--init path`` (reads only JSON); ``model``, if given, must be theirs."""
    given = os.fspath(path)
    p = Path(given).expanduser()
    if not p.exists():
        raise ValueError(f"--init {given}: no such file or folder; expected a run folder of `mambamixer classify`, "
                         f"a checkpoint folder or a folder written by save_pretrained")
    if p.is_file():
        if p.suffix != ".safetensors":
            raise ValueError(f"--init {given} is a {p.suffix or 'suffix-less'} file; expected a folder, or the "
                             f".safetensors file of a folder written by save_pretrained")
        folder, weights = p.parent, p
    else:
        folder = find_checkpoint(p)
        weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise ValueError(f"--init {given}: {weights} does not exist")
    blob = read_config(folder)
    run = read_run(folder) if (folder / RUN_NAME).is_file() else None
    if run is not None:
        if run.get("task", "forecast") != "classify":
            raise ValueError(f"--init {given} is a {run.get('task', 'forecast')} run, not an image-classification run")
        if model is not None and model != run["model_name"]:
            raise ValueError(f"--model {model} differs from the model of --init {given}, {run['model_name']}; give "
                             f"the same name, or leave --model out to take it from the checkpoint")
        model = run["model_name"]
    elif model is None:
        raise ValueError(f"--init {given} is a saved model without a run.json naming its model: give --model (the "
                         f"registered name it was created with)")
    if model_task(model) != "vision":
        raise ValueError(f"model {model!r} is a {model_task(model)} model, not an image classifier")
    return InitSource(given, weights, model, blob["config"], blob.get("model_class"), run)


def adapt_input_conv(weight: Tensor, in_chans: int) -> Tensor:
    """(out, c, kh, kw) -> (out, in_chans, kh, kw), timm's rule: to one channel the sum over the c
    channels (a grey image x then gives what (x, ..., x) gave), else the c channels tiled and scaled by
    c / in_chans (a grey image repeated to in_chans channels gives what it gave)."""
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    c = weight.shape[1]
    return weight.repeat(1, math.ceil(in_chans / c), 1, 1)[:, :in_chans] * (c / in_chans)


def load_matching(net: nn.Module, state: dict[str, Tensor], what: str) -> list[str]:
    """Copy ``state`` into ``net``: the same keys, the same shapes except a convolution on the input
    channels (adapted); any other difference raises a ``ValueError`` naming the first tensor."""
    own = net.state_dict()
    in_chans = int(getattr(net.config, "in_chans", 0))
    for a, b, where in ((own, state, "the weights"), (state, own, f"model {type(net).__name__}")):
        extra = [k for k in a if k not in b]
        if extra:
            raise ValueError(f"{what}: {len(extra)} tensors are missing from {where}, the first {extra[0]!r}; "
                             f"expected the same model and --set overrides")
    notes, adapted = [], {}
    for key, target in own.items():
        value = state[key]
        if value.shape == target.shape:
            adapted[key] = value
            continue
        channels = value.dim() == 4 and value.shape[0] == target.shape[0] and value.shape[2:] == target.shape[2:]
        if channels and target.shape[1] == in_chans:
            adapted[key] = adapt_input_conv(value, in_chans).to(value.dtype)
            notes.append(f"input convolution adapted: {value.shape[1]} -> {in_chans} channels ({key})")
            continue
        raise ValueError(f"{what}: tensor {key!r} is {tuple(value.shape)} there, {tuple(target.shape)} in the model "
                         f"for this data; expected the same model and --set overrides")
    net.load_state_dict(adapted, strict=True)
    return notes


def _frozen_norm(module: nn.Module, _inputs: Any) -> None:
    module.training = False  # BatchNorm normalises with, and keeps, its running statistics


def freeze_backbone(net: nn.Module) -> int:
    """Train only the classifier (``net.get_classifier()``): every other parameter stops requiring
    gradients and every BatchNorm keeps its running statistics. Returns the trainable parameter count."""
    keep = {id(p) for p in net.get_classifier().parameters()}
    for p in net.parameters():
        p.requires_grad_(id(p) in keep)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.register_forward_pre_hook(_frozen_norm)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    if trainable == 0:
        raise ValueError("--freeze-backbone leaves nothing to train: the model has no classifier (num_classes 0)")
    return trainable


__all__ = ["InitSource", "adapt_input_conv", "freeze_backbone", "load_init", "load_matching"]
