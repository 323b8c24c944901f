"""Model families; importing this package registers every model."""

from mambamixer.models import dlinear, itransformer, mambaout, patchtst, resnet, simba, tsm2, vim2, vit  # noqa: F401
from mambamixer.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
