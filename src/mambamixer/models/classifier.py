"""timm's classifier convention, written once for every vision family: ``get_classifier`` and
``reset_classifier``.

    model = create_model("vim2_femto", num_classes=10, in_chans=1)
    model.reset_classifier(3)      # a new final Linear, freshly initialised: logits (batch, 3)
    model.get_classifier()         # that nn.Linear (nn.Identity with num_classes=0)

The classifier is the final Linear of the model's one ``ClassifierHead``; the rest of the head
(pooling, LayerNorm, MambaOut's MLP, SiMBA's class-token block) belongs to what is kept.
``reset_classifier`` also sets ``config.num_classes``, so that ``save_pretrained`` writes a config
that rebuilds the model.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from mambamixer.layers.classifier_head import ClassifierHead


class ClassifierMixin:
    """Mixin for a vision ``nn.Module`` holding exactly one ``ClassifierHead``."""

    config: Any

    def classifier_head(self) -> ClassifierHead:
        heads = [m for m in self.modules() if isinstance(m, ClassifierHead)]  # type: ignore[attr-defined]
        if len(heads) != 1:
            raise ValueError(f"{type(self).__name__} has {len(heads)} classifier heads, expected one (a "
                             f"features_only backbone has none)")
        return heads[0]

    def get_classifier(self) -> nn.Module:
        """The final Linear (batch, width) -> (batch, num_classes)."""
        return self.classifier_head().fc

    def classifier_name(self) -> str:
        """The classifier's module name, the prefix of its state-dict keys (e.g. ``head.fc``)."""
        fc = self.get_classifier()
        return next(name for name, m in self.named_modules() if m is fc)  # type: ignore[attr-defined]

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final Linear by a freshly initialised one to ``num_classes`` (0: features)."""
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be a non-negative integer, got {num_classes!r}")
        self.classifier_head().reset(num_classes)
        self.config.num_classes = num_classes
