"""Post-training quantization: a model artifact's int8 or float16 variant, as a model artifact of its own.

    vitrine quantize --model .vitrine/models/<model_id> --variant int8
    vitrine quantize --model .vitrine/models --variant float16          # the LATEST model
    vitrine quantize --model s3://bucket/vitrine/models/<model_id> --variant int8 --out s3://bucket/vitrine/models
    vitrine quantize --model ... --variant int8 --no-evaluate --json
    python -m jobs.quantize_model --model ... --variant int8

The variant is a TFLite model (``model.tflite``) with ONE output, the embedding and the class
probabilities side by side, so one forward pass (:class:`artifacts.inference.ModelRunner`) gives
the classifier and the search what the float model gives them. ``int8`` is dynamic-range
quantization (int8 weights, activations quantized per batch at run time, no calibration data);
``float16`` stores float16 weights (half the size; on CPU they are widened back to float32 when
the model loads, so it runs at float32 speed); ``float32`` converts without quantizing (the TFLite
runtime alone, to tell its gain from the quantization's). Why TFLite and not Keras 3's own
``model.quantize("int8")``: Keras 3.15 quantizes Dense/EinsumDense/Embedding layers only, so our
CNNs keep float32 convolutions and ran no faster (measured; docs/BENCHMARKS.md, "Quantized
models").

The variant gets a new ``model_id`` (``<parent_id>-<variant>-<time>-<hex>``): embeddings, indexes
and the service key everything by model id, so a variant's vectors are never searched in an
index of the float model's (or the other way round). Its card (artifacts/model_card.py) keeps the
parent's preprocessing, classes and embedding layer, and records the variant, the parent's id,
URI and the sha256 of its model file; with evaluation on (default) its ``test_metrics`` are the
variant's own on the parent's test split, next to its top-1 agreement with the parent and the
cosine between the two embeddings of each test image. It is written next to the parent (or under
``--out``) and never moves ``models/LATEST``: serve it by pinning its id (serve/config.yaml
``model:``) with an index built from its own embeddings (``vitrine embed --model <its dir>``), or
promote it past the quality gate with ``vitrine models promote ID``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from artifacts.logs import setup_logging
from jobs import flags

log = logging.getLogger("vitrine.quantize")

VARIANTS = ("int8", "float16", "float32")


@dataclass(frozen=True)
class QuantizeConfig:
    model: str = ""  # model dir or models/ dir (its LATEST); default <storage>/models
    variant: str = "int8"  # int8 | float16 | float32 (TFLite, not quantized: for comparison)
    out: str = ""  # models directory to write into; default the one holding the parent
    storage: str = ""  # default $VITRINE_STORAGE or ./.vitrine
    evaluate: bool = True  # measure the variant (and its agreement with the parent) on the test split
    data: str = ""  # the parent's dataset; default as `vitrine evaluate` finds it ($FASHION_MNIST_DIR)
    threads: int = 0  # TensorFlow / TFLite CPU threads; 0 = all


@dataclass
class QuantizeResult:
    model_id: str
    model_uri: str
    variant: str
    parent_model_id: str
    parent_model_uri: str
    size_bytes: int
    parent_size_bytes: int
    test_metrics: dict
    quantization: dict
    wall_time_s: float


def convert(model, embedding_layer: str, variant: str) -> bytes:
    """A Keras model → TFLite flatbuffer with one output, ``embedding ++ probabilities``."""
    import keras
    import tensorflow as tf

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
    emb = model.get_layer(embedding_layer).output
    joined = keras.Model(model.inputs, keras.layers.Concatenate(name="embedding_and_probabilities")(
        [emb, model.outputs[0]]))
    with tempfile.TemporaryDirectory(prefix="vitrine-quantize-") as tmp:
        joined.export(str(Path(tmp) / "saved"), format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(Path(tmp) / "saved"))
        if variant != "float32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if variant == "float16":
            converter.target_spec.supported_types = [tf.float16]
        return converter.convert()


def _variant_card(parent, parent_uri: str, variant: str, blob: bytes, parent_size: int):
    import tensorflow as tf

    from artifacts import model_artifact, publish
    from artifacts.model_card import VARIANT_FORMAT

    method = "tflite" if variant == "float32" else f"tflite-{'dynamic-range' if variant == 'int8' else 'float16'}"
    quantization = {"variant": variant, "method": method, "parent_model_id": parent.model_id,
                    "parent_model_uri": parent_uri, "parent_sha256": model_artifact.model_sha256(parent_uri),
                    "size_bytes": len(blob), "parent_size_bytes": parent_size}
    return dataclasses.replace(
        parent, model_id=publish.new_id(f"{parent.model_id}-{variant}"[:100]), runtime="tflite",
        quantization=quantization, test_metrics={}, format_version=VARIANT_FORMAT,
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        framework={**parent.framework, "tensorflow": tf.__version__, "runtime": "tflite"})


def compare(variant_uri: str, parent_uri: str, data: str = "") -> tuple[dict, dict]:
    """The variant's test metrics, and how it agrees with its parent, image by image, on the
    parent's test split (both through ModelRunner)."""
    import numpy as np

    from artifacts.inference import ModelRunner
    from tune.evaluation import runner_outputs, test_split
    from tune.metrics import classification_metrics

    parent, variant = ModelRunner(parent_uri), ModelRunner(variant_uri)
    ds = test_split(parent.card, data or None)
    a, b = runner_outputs(parent, ds.test_x), runner_outputs(variant, ds.test_x)
    pa_, pb = a.probabilities.argmax(axis=1), b.probabilities.argmax(axis=1)
    cosine = np.sum(a.embeddings * b.embeddings, axis=1)
    metrics = classification_metrics(ds.test_y.astype(int), pb, ds.class_names)
    return metrics, {"test_images": int(len(pb)), "agreement_top1": float(np.mean(pa_ == pb)),
                     "parent_accuracy": float(np.mean(pa_ == ds.test_y)),
                     "embedding_cosine_mean": float(cosine.mean()) if len(cosine) else None,
                     "embedding_cosine_min": float(cosine.min()) if len(cosine) else None,
                     "data_source": ds.source}


def run(config: QuantizeConfig) -> QuantizeResult:
    """Convert ``config.model`` to ``config.variant``, measure it, write it as a model artifact."""
    from artifacts import model_artifact, publish, storage
    from artifacts.configuration import ConfigError
    from artifacts.inference import configure_tensorflow
    from artifacts.model_card import CARD_FILE

    t0 = time.time()
    if config.variant not in VARIANTS:
        raise ConfigError(f"variant must be one of {', '.join(VARIANTS)}; got {config.variant!r}")
    configure_tensorflow(config.threads)
    root = config.storage or storage.default_root()
    parent_uri = publish.resolve(config.model or model_artifact.models_root(root), manifest_name=CARD_FILE)
    loaded = model_artifact.load(parent_uri)
    parent = loaded.card
    if parent.runtime != "keras":
        raise ConfigError(f"model {parent.model_id} is already a {parent.variant} variant of "
                          f"{parent.quantization.get('parent_model_id')}: quantize that float model instead")
    parent_size = len(storage.read_bytes(storage.join(parent_uri, parent.model_file)))
    blob = convert(loaded.model, parent.embedding_layer, config.variant)
    card = _variant_card(parent, parent_uri, config.variant, blob, parent_size)
    if config.evaluate:
        with tempfile.TemporaryDirectory(prefix="vitrine-variant-") as tmp:
            # Measured before it is written: the card, written last, then holds the variant's own numbers.
            (Path(tmp) / card.model_file).write_bytes(blob)
            (Path(tmp) / CARD_FILE).write_text(card.to_json())
            metrics, agreement = compare(tmp, parent_uri, config.data)
        card = dataclasses.replace(card, test_metrics=metrics, quantization={**card.quantization, **agreement})
        log.info("%s variant: test accuracy %.4f (parent %.4f), top-1 agreement %.4f, embedding cosine mean %.4f",
                 config.variant, metrics["accuracy"], agreement["parent_accuracy"], agreement["agreement_top1"],
                 agreement["embedding_cosine_mean"] or 0.0)
    out = config.out or parent_uri.rstrip("/").rsplit("/", 1)[0]
    uri = model_artifact.save(blob, card, out, make_latest=False)
    log.info("wrote %s (%s, %d bytes; parent %s, %d bytes)", uri, config.variant, len(blob), parent.model_id, parent_size)
    return QuantizeResult(model_id=card.model_id, model_uri=uri, variant=config.variant,
                          parent_model_id=parent.model_id, parent_model_uri=parent_uri, size_bytes=len(blob),
                          parent_size_bytes=parent_size, test_metrics=card.test_metrics,
                          quantization=card.quantization, wall_time_s=time.time() - t0)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="vitrine quantize", description=__doc__,
                                          formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model directory or models/ directory with LATEST (default <storage>/models)")
    p.add_argument("--variant", choices=VARIANTS, help="int8 (default), float16, or float32 (TFLite, not quantized)")
    p.add_argument("--out", help="models directory to write into (default: the one holding the model)")
    flags.add_storage(p)
    p.add_argument("--data", help="the model's dataset for the evaluation (default $FASHION_MNIST_DIR)")
    p.add_argument("--no-evaluate", action="store_true", help="write the variant without measuring it")
    p.add_argument("--config", help="YAML file with QuantizeConfig fields")
    flags.add_overrides(p)
    flags.add_json(p)
    return p


def main(argv: list[str] | None = None) -> int:
    from artifacts.configuration import load_config

    args = build_parser().parse_args(argv)
    setup_logging()
    config = load_config(QuantizeConfig, yaml_path=args.config, overrides=args.overrides,
                         values={"model": args.model, "variant": args.variant, "out": args.out,
                                 "storage": args.storage, "data": args.data,
                                 "evaluate": False if args.no_evaluate else None})
    result = run(config)
    if args.json:
        print(json.dumps(dataclasses.asdict(result), indent=2))
        return 0
    print(f"{result.variant} variant of {result.parent_model_id}: {result.model_uri}")
    print(f"  size {result.size_bytes:,} bytes (parent {result.parent_size_bytes:,})")
    if result.test_metrics:
        q = result.quantization
        print(f"  test accuracy {result.test_metrics['accuracy']:.4f} (parent {q['parent_accuracy']:.4f}), "
              f"top-1 agreement {q['agreement_top1']:.4f}, embedding cosine mean {q['embedding_cosine_mean']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
