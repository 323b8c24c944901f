"""Model families; importing this package registers every model."""

from mambamixer.models import (  # noqa: F401
    dlinear,
    itransformer,
    mambaout,
    patchtst,
    resnet,
    simba,
    tsm2,
    tsmixer,
    vim2,
    vit,
)
from mambamixer.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
