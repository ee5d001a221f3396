"""Model registry: every trainable architecture in vitrine is registered here by name.

Builders register themselves with :func:`register_model`; callers build models with
:func:`build_model` and inspect them with :func:`list_models` / :func:`describe_models`.

Contract for every registered builder::

    def build(num_classes=10, input_shape=(28, 28, 1), **options) -> keras.Model

* functional API, returns an *uncompiled* model;
* output: softmax probabilities, shape ``(batch, num_classes)``;
* exactly one layer named :data:`EMBEDDING_LAYER` whose output is a 1-D feature vector
  ``(batch, D)`` (the activation of the last hidden dense block), used for visual search;
* built-in Keras layers only (no ``Lambda``, no custom classes), so a saved ``.keras``
  file loads without importing this package.
"""

from __future__ import annotations

import gc
import inspect
from dataclasses import dataclass
from typing import Any, Callable

import keras

EMBEDDING_LAYER = "embedding"

_REGISTRY: dict[str, "ModelInfo"] = {}


@dataclass(frozen=True)
class ModelInfo:
    """Registry entry for one architecture."""

    name: str
    builder: Callable[..., keras.Model]
    input_shape: tuple[int, int, int]  # default input shape (H, W, C)
    description: str
    reference: str  # paper / source, short


def _check_input_shape(input_shape: Any, *, what: str = "input_shape") -> tuple[int, int, int]:
    try:
        dims = list(input_shape)
    except TypeError:
        dims = []
    if len(dims) != 3 or not all(_is_positive_int(d) for d in dims):
        raise ValueError(f"{what} must be a (height, width, channels) tuple of positive ints; got {input_shape!r}")
    return tuple(int(d) for d in dims)  # type: ignore[return-value]


def _is_positive_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    try:
        return int(value) == value and int(value) > 0
    except (TypeError, ValueError):
        return False


def register_model(
    name: str,
    *,
    input_shape: tuple[int, int, int],
    description: str,
    reference: str,
) -> Callable[[Callable[..., keras.Model]], Callable[..., keras.Model]]:
    """Decorator registering ``builder`` under ``name``. A duplicate name raises ``ValueError``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string; got {name!r}")
    shape = _check_input_shape(input_shape)

    def decorator(builder: Callable[..., keras.Model]) -> Callable[..., keras.Model]:
        if name in _REGISTRY:
            raise ValueError(
                f"model {name!r} is already registered (by {_REGISTRY[name].builder.__module__}."
                f"{_REGISTRY[name].builder.__qualname__})"
            )
        if not callable(builder):
            raise TypeError(f"builder for {name!r} must be callable; got {builder!r}")
        _REGISTRY[name] = ModelInfo(
            name=name,
            builder=builder,
            input_shape=shape,
            description=description,
            reference=reference,
        )
        return builder

    return decorator


def _valid_names() -> str:
    return ", ".join(sorted(_REGISTRY)) or "(none registered)"


def get_model_info(name: str) -> ModelInfo:
    """Registry entry for ``name``; unknown names raise ``ValueError`` listing the valid ones."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {name!r}; valid names: {_valid_names()}") from None


def list_models() -> list[ModelInfo]:
    """All registered models, sorted by name."""
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]


def _builder_options(builder: Callable[..., keras.Model]) -> tuple[list[str], bool]:
    """(named options besides num_classes/input_shape, whether **kwargs is accepted)."""
    params = inspect.signature(builder).parameters
    named = [
        p.name
        for p in params.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in ("num_classes", "input_shape")
    ]
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    return named, var_kw


def build_model(
    name: str,
    *,
    num_classes: int = 10,
    input_shape: tuple[int, int, int] | None = None,
    **options: Any,
) -> keras.Model:
    """Build the registered model ``name`` (uncompiled).

    ``input_shape`` defaults to the model's registered default. Options the builder does not
    accept raise ``TypeError`` naming the valid options.
    """
    info = get_model_info(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2; got {num_classes!r}")
    shape = info.input_shape if input_shape is None else _check_input_shape(input_shape)
    named, var_kw = _builder_options(info.builder)
    unknown = sorted(set(options) - set(named))
    if unknown and not var_kw:
        raise TypeError(
            f"model {name!r} does not accept option(s) {', '.join(unknown)}; "
            f"valid options: {', '.join(named) if named else '(none)'}"
        )
    return info.builder(num_classes=num_classes, input_shape=shape, **options)


def _count(weights: list) -> int:
    return int(sum(int(keras.ops.size(w)) for w in weights))


def describe_models() -> list[dict[str, Any]]:
    """Build every model at its default shape and summarise it.

    Transfer models are built with ``weights=None`` (no download, no local file needed).
    Returns ``[{"name", "params", "trainable_params", "input_shape", "embedding_dim",
    "description", "reference"}]`` sorted by name.
    """
    rows = []
    for info in list_models():
        named, _ = _builder_options(info.builder)
        options = {"weights": None} if "weights" in named else {}
        model = build_model(info.name, input_shape=info.input_shape, **options)
        rows.append(
            {
                "name": info.name,
                "params": int(model.count_params()),
                "trainable_params": _count(model.trainable_weights),
                "input_shape": list(info.input_shape),
                "embedding_dim": int(model.get_layer(EMBEDDING_LAYER).output.shape[-1]),
                "description": info.description,
                "reference": info.reference,
            }
        )
        del model
        gc.collect()
    return rows
