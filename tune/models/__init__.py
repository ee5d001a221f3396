"""vitrine model zoo: importing this package registers every architecture.

>>> from tune.models import build_model, list_models
>>> model = build_model("vitrine_cnn", num_classes=10)
"""

from . import registry
from . import published  # noqa: F401  (registers the published baselines)
from . import transfer  # noqa: F401  (registers vgg16, resnet50, mobilenet_v2)
from . import vitrine_cnn  # noqa: F401  (registers vitrine_cnn)
from .registry import (
    EMBEDDING_LAYER,
    ModelInfo,
    build_model,
    describe_models,
    get_model_info,
    list_models,
    register_model,
)

__all__ = [
    "EMBEDDING_LAYER",
    "ModelInfo",
    "build_model",
    "describe_models",
    "get_model_info",
    "list_models",
    "register_model",
    "registry",
]
