"""The model card: everything a consumer needs to use a trained model without training code.

It travels inside the model artifact (``<storage>/models/<model_id>/model_card.json``) and is
written last, so its presence marks a complete artifact.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from .preprocess import PreprocessSpec

CARD_FILE = "model_card.json"
MODEL_FILE = "model.keras"
FORMAT_VERSION = 1


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
    format_version: int = FORMAT_VERSION

    @property
    def preprocess_spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.preprocessing)

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
        return cls(**known)
