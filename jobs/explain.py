"""Which pixels a model's prediction rests on, for image files: Grad-CAM (or a gradient saliency
map) drawn over each image.

    vitrine explain --model .vitrine/models photo.jpg shirt.png --out explanations/
    vitrine explain --model s3://bucket/vitrine/models/vitrine-cnn-20261128T130000-ab12 \\
        s3://bucket/uploads/a.jpg --out s3://bucket/explanations/run1 --method saliency
    python -m jobs.explain --model ... IMAGE... --out DIR [--set max_side=256]

For each image ``<stem>.png`` is the heatmap over the image (at its size, the longer side at most
``max_side``; the part the model saw, the preprocessing's crop, carries the heat),
``<stem>.input.png`` the heatmap over the model input itself, and ``<stem>.json`` the predicted
class, its probability, the method and the layer. ``explanations.json`` lists every image with
the resolved config; an image that cannot be read gets its reason there and the command exits 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from artifacts.logs import setup_logging
from jobs import flags

log = logging.getLogger("vitrine.explain")
INDEX_FILE = "explanations.json"
INPUT_VIEW_SIDE = 224  # the model input is enlarged (whole pixels) to about this, to be seen


@dataclass(frozen=True)
class ExplainConfig:
    model: str = ""  # model dir or models/ dir with LATEST; default <storage>/models
    images: tuple[str, ...] = ()  # paths or URIs
    out: str = "explanations"
    method: str = "gradcam"  # gradcam | saliency
    max_side: int = 512  # longest side of the overlay on the image
    max_pixels: int = 40_000_000
    storage: str = ""  # default $VITRINE_STORAGE or ./.vitrine
    threads: int = 0  # TensorFlow CPU threads; 0 = all


@dataclass
class ExplainResult:
    model_id: str
    out: str
    method: str
    layer: str
    items: list[dict] = field(default_factory=list)

    @property
    def failed(self) -> list[dict]:
        return [i for i in self.items if "error" in i]


def _stems(images) -> list[str]:
    """A file name per image, unique even when two images share a name."""
    seen: dict[str, int] = {}
    out = []
    for uri in images:
        stem = Path(uri.rstrip("/").rsplit("/", 1)[-1]).stem or "image"
        seen[stem] = seen.get(stem, 0) + 1
        out.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return out


def _explain_one(explainer, uri: str, stem: str, config: ExplainConfig, tmp: Path) -> dict:
    import numpy as np

    from artifacts import explain, storage
    from artifacts.preprocess import ImageDecodeError

    try:
        upload = explain.read_upload(storage.read_bytes(uri), explainer.card.preprocess_spec,
                                     max_pixels=config.max_pixels)
    except ImageDecodeError as exc:
        return {"image": uri, "error": f"not a usable image: {exc.reason}"}
    except storage.StorageError as exc:
        return {"image": uri, "error": str(exc)}
    e = explainer.explain(upload.pixels, config.method)[0]
    (tmp / f"{stem}.png").write_bytes(explain.png_bytes(
        explain.upload_overlay(upload, e.heatmap, config.max_side)))
    seen = explain.input_image(upload.pixels, explainer.card.preprocess_spec.scale)
    k = max(1, INPUT_VIEW_SIDE // max(seen.shape[:2]))
    big = np.kron(seen, np.ones((k, k) + (1,) * (seen.ndim - 2), np.uint8))
    (tmp / f"{stem}.input.png").write_bytes(explain.png_bytes(explain.overlay(big, e.heatmap)))
    item = {"image": uri, "overlay": f"{stem}.png", "input_overlay": f"{stem}.input.png",
            "predicted": explainer.card.class_names[e.class_index], "probability": round(e.probability, 6),
            "method": e.method, "layer": e.layer, "empty": e.empty, "heatmap_shape": list(e.heatmap.shape),
            "image_size": list(upload.size), "input_box": [round(v, 2) for v in upload.box],
            "input_angle": round(upload.turn[0], 2)}
    (tmp / f"{stem}.json").write_text(json.dumps(item, indent=2) + "\n")
    return item


def run(config: ExplainConfig) -> ExplainResult:
    """Explain every image of ``config`` with its model; write the overlays and JSON to ``out``."""
    from artifacts import explain, model_artifact, storage
    from artifacts.configuration import ConfigError
    from artifacts.inference import configure_tensorflow

    if config.method not in explain.METHODS:
        raise ConfigError(f"method must be one of {', '.join(explain.METHODS)}, got {config.method!r}")
    if not config.images:
        raise ConfigError("no images to explain")
    configure_tensorflow(config.threads)
    model_uri = config.model or model_artifact.models_root(config.storage or storage.default_root())
    explainer = explain.load_explainer(model_uri)
    result = ExplainResult(model_id=explainer.card.model_id, out=config.out, method=config.method,
                           layer=explainer.layer if config.method == "gradcam" else "input")
    with tempfile.TemporaryDirectory(prefix="vitrine-explain-") as tmp:
        for uri, stem in zip(config.images, _stems(config.images)):
            result.items.append(_explain_one(explainer, uri, stem, config, Path(tmp)))
            log.info("%s: %s", uri, result.items[-1].get("predicted") or result.items[-1]["error"])
        Path(tmp, INDEX_FILE).write_text(json.dumps(
            {**asdict(result), "model_uri": explainer.uri, "config": asdict(config)}, indent=2) + "\n")
        storage.upload_dir(tmp, config.out)
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vitrine explain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or URIs")
    p.add_argument("--model", help="model directory or models/ directory with LATEST (default <storage>/models)")
    p.add_argument("--out", required=True, help="directory (or URI) for the overlays and JSON")
    p.add_argument("--method", choices=("gradcam", "saliency"), help="default gradcam")
    flags.add_storage(p)
    p.add_argument("--config", help="YAML file over the defaults")
    flags.add_overrides(p)
    flags.add_json(p)
    return p


def main(argv: list[str] | None = None) -> int:
    from artifacts.configuration import load_config

    args = build_parser().parse_args(argv)
    setup_logging()
    config = load_config(ExplainConfig, yaml_path=args.config, overrides=args.overrides, values={
        "model": args.model, "images": tuple(args.images), "out": args.out, "method": args.method,
        "storage": args.storage})
    result = run(config)
    if args.json:
        print(json.dumps(asdict(result), indent=2))
    else:
        for item in result.items:
            print(f"{item['image']}: " + (f"error: {item['error']}" if "error" in item else
                                          f"{item['predicted']} ({item['probability']:.1%}) -> {item['overlay']}"))
        print(f"{result.method} of model {result.model_id} ({result.layer}) written to {result.out}")
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
