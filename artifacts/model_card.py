"""The model card: everything a consumer needs to use a trained model without training code.

It travels inside the model artifact (``<storage>/models/<model_id>/model_card.json``) and is
written last, so its presence marks a complete artifact.

A post-training quantized variant (``vitrine quantize``) is a model of its own: a new
``model_id``, ``runtime: tflite`` (its file is ``model.tflite``) and a ``quantization`` record
naming the variant and the parent model it was made from (id, URI, sha256 of its model file).
Such a card says ``format_version: 2``, so code that predates variants refuses it in words
instead of looking for a ``model.keras`` that is not there; a Keras model's card stays at 1.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from .preprocess import PreprocessSpec

CARD_FILE = "model_card.json"
MODEL_FILE = "model.keras"
TFLITE_FILE = "model.tflite"
RUNTIMES = {"keras": MODEL_FILE, "tflite": TFLITE_FILE}  # runtime -> the model file it loads
FORMAT_VERSION = 2  # the newest this code reads
KERAS_FORMAT = 1  # what a Keras model's card writes: readers from before variants still take it
VARIANT_FORMAT = 2  # runtime + quantization


@dataclass
class ModelCard:
    model_id: str
    architecture: str
    class_names: list[str]
    input_shape: list[int]
    preprocessing: dict
    embedding_layer: str
    embedding_dim: int
    params: int = 0
    training_config: dict = field(default_factory=dict)
    test_metrics: dict = field(default_factory=dict)
    dataset: dict = field(default_factory=dict)
    created_at: str = ""
    framework: dict = field(default_factory=dict)
    runtime: str = "keras"  # keras (model.keras) | tflite (model.tflite)
    # {} for a trained model; for a variant: variant, method, parent_model_id, parent_model_uri,
    # parent_sha256 and what the quantize job measured against the parent.
    quantization: dict = field(default_factory=dict)
    format_version: int = KERAS_FORMAT

    @property
    def preprocess_spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.preprocessing)

    @property
    def model_file(self) -> str:
        return RUNTIMES[self.runtime]

    @property
    def variant(self) -> str:
        """``float32`` for a trained model, else its quantization variant (``int8``, ``float16``)."""
        return str(self.quantization.get("variant", "float32"))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "ModelCard":
        data = json.loads(text)
        if data.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(f"model card format {data['format_version']} is newer than this code understands ({FORMAT_VERSION})")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        missing = [k for k in ("model_id", "architecture", "class_names", "input_shape", "preprocessing",
                               "embedding_layer", "embedding_dim") if k not in known]
        if missing:
            raise ValueError(f"model card lacks {', '.join(missing)}")
        if known.get("runtime", "keras") not in RUNTIMES:
            raise ValueError(f"model card runtime {known['runtime']!r} is not one of {', '.join(RUNTIMES)}")
        return cls(**known)
