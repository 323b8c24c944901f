"""mambamixer: MambaMixer, TSM2, ViM2 and the models they are compared with."""

from mambamixer.classifier import Classifier
from mambamixer.forecaster import Forecaster
from mambamixer.models.registry import create_model, list_models

__version__ = "0.1.0"
__all__ = ["Classifier", "Forecaster", "create_model", "list_models", "__version__"]
