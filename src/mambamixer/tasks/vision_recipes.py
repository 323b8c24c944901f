"""Named training recipes of ``classify`` (``--recipe deit``): every hyper-parameter of a published recipe
in one place, each used where the run leaves the argument as None (explicit arguments win).

    recipe = get_recipe("deit")
    recipe.lr_for(batch_size=256)           # 5e-4 * 256 / 512 = 2.5e-4
    recipe.augment("folder", 224)           # AugmentConfig with RandAugment and erasing

The DeiT recipe (Touvron et al., ICML 2021; the one ViM2, MambaOut, SiMBA, Vim and VMamba train
ImageNet-1k with): docs/vision.md has the table with each value's source and what differs here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from mambamixer.data.augment import AugmentConfig, flips_fit
from mambamixer.data.mixup import MixupConfig

__all__ = ["RECIPES", "VisionRecipe", "get_recipe"]


@dataclass(frozen=True)
class VisionRecipe:
    name: str
    training: dict[str, Any]  # classify's training hyper-parameters (keys of classify.RECIPE); lr: see lr_for
    base_lr: float  # peak LR at base_batch, scaled linearly with the global batch (Goyal et al., 2017)
    base_batch: int
    rand_layers: int  # RandAugment: ops per image, magnitude, magnitude noise
    rand_magnitude: float
    rand_magnitude_std: float
    erase_prob: float
    mixup_alpha: float
    cutmix_alpha: float
    switch_prob: float
    eval_crop_pct: float  # evaluation: resize to img_size / crop_pct, centre crop img_size
    # stochastic depth for families whose sizes set none (vim2 and mambaout sizes carry their papers' rates)
    drop_path_rate: dict[str, float] = field(default_factory=dict)

    def lr_for(self, batch_size: int) -> float:
        return self.base_lr * batch_size / self.base_batch

    def augment(self, dataset: str, img_size: int) -> AugmentConfig:
        """In-memory path: the dataset's crop padding and flips (no flips for digits), plus RandAugment and
        erasing. (The streaming loader replaces the padded crop by a random-resized crop at decode time.)"""
        return AugmentConfig(crop_padding=max(1, img_size // 8), hflip=flips_fit(dataset), erase_prob=self.erase_prob,
                             rand_layers=self.rand_layers, rand_magnitude=self.rand_magnitude,
                             rand_magnitude_std=self.rand_magnitude_std)

    def mixup(self, label_smoothing: float, mixup_alpha: float | None = None,
              cutmix_alpha: float | None = None) -> MixupConfig:
        return MixupConfig(mixup_alpha=self.mixup_alpha if mixup_alpha is None else mixup_alpha,
                           cutmix_alpha=self.cutmix_alpha if cutmix_alpha is None else cutmix_alpha,
                           switch_prob=self.switch_prob, label_smoothing=label_smoothing)

    def model_overrides(self, model: str) -> dict[str, float]:
        """``{"drop_path_rate": r}`` for a model of a family in ``drop_path_rate`` (``simba_s`` -> simba), else {}."""
        family = [k for k in self.drop_path_rate if model == k or model.startswith(k + "_")]
        return {"drop_path_rate": self.drop_path_rate[max(family, key=len)]} if family else {}


RECIPES: dict[str, VisionRecipe] = {
    "deit": VisionRecipe(
        name="deit",
        training={"optimizer": "adamw", "weight_decay": 0.05, "schedule": "cosine", "warmup_epochs": 20.0,
                  "epochs": 300, "batch_size": 1024, "label_smoothing": 0.1, "ema_decay": 0.99996,
                  "min_lr": 1e-5, "grad_clip": None, "patience": None},
        base_lr=5e-4, base_batch=512,
        rand_layers=2, rand_magnitude=9.0, rand_magnitude_std=0.5, erase_prob=0.25,
        mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, eval_crop_pct=0.875,
        drop_path_rate={"simba": 0.1},
    ),
}


def get_recipe(name: str | None) -> VisionRecipe | None:
    """The named recipe; None or "default" -> None (classify's own RECIPE)."""
    if name is None or name == "default":
        return None
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: default, {', '.join(RECIPES)}")
    return RECIPES[name]


def describe_recipe(run: dict[str, Any], net: nn.Module) -> str:
    """One line of the run's recipe: optimiser, LR, schedule, smoothing, EMA, stochastic depth, augmentation,
    Mixup/CutMix and the evaluation crop (printed at the start of every run)."""
    t, aug, mix = run["training"], run["augment"], run["mixup"]
    drop_path = getattr(getattr(net, "config", None), "drop_path_rate", None)
    parts = [f"{t['optimizer']} lr {t['lr']:.3g} wd {t['weight_decay']:g} {t['schedule']} {t['epochs']} epochs "
             f"(warm-up {t['warmup_epochs']:g}) batch {t['batch_size']}", f"label smoothing {t['label_smoothing']:g}",
             f"ema {t['ema_decay']:g}" if t["ema_decay"] else "no ema",
             f"drop path {drop_path:g}" if drop_path is not None else "no drop path",
             f"augment {AugmentConfig(**aug).describe() if aug else 'none'}",
             MixupConfig(**mix).describe() if mix else "no mixup",
             _describe_eval(run)]
    return f"recipe {run['recipe']}: " + ", ".join(parts)


def _describe_eval(run: dict[str, Any]) -> str:
    if run.get("data_mode") == "stream":
        return f"eval shorter-side resize and centre crop {run['eval_crop']:g} at decode"
    return f"eval centre crop {run['eval_crop_pct']:g}" if run["eval_crop_pct"] else "eval resize"
