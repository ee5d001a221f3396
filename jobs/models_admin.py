"""Exported models and the ``models/LATEST`` pointer: list them, promote one, roll back.

    vitrine models list-artifacts [--json]      # exported model ids, test accuracy, which is LATEST
    vitrine models promote ID                   # publish ID if it passes the gate (artifacts/model_gate.py)
    vitrine models promote ID --force           # publish ID anyway: no gate, no forward-only check
    vitrine models promote ID --set gate.min_accuracy=0.9 --set gate.tolerance=0.01
    vitrine models rollback                     # LATEST back to the model it named before

``vitrine models`` with no sub-command lists the registered architectures (``jobs/list_models.py``).
Rollback follows the history kept inside the ``LATEST`` pointer (``artifacts/publish.py``), so
it only ever returns to a model that was published, never to one that failed the gate.
Exit status: 0 when ``LATEST`` moved (or, for list-artifacts, always), 1 when it was refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field

from artifacts import model_artifact, model_gate, publish, storage
from artifacts.configuration import load_config
from artifacts.model_card import CARD_FILE
from jobs import flags

SUBCOMMANDS = ("list-artifacts", "promote", "rollback")


@dataclass(frozen=True)
class ModelsAdminConfig:
    storage: str = ""  # default: $VITRINE_STORAGE or ./.vitrine
    gate: model_gate.GateConfig = field(default_factory=model_gate.GateConfig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vitrine models", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="action", required=True)
    for name, help_ in (("list-artifacts", "exported models, their test accuracy, which is LATEST"),
                        ("promote", "make an exported model models/LATEST if it passes the gate"),
                        ("rollback", "move models/LATEST back to the model it named before")):
        s = sub.add_parser(name, help=help_)
        flags.add_storage(s)
        s.add_argument("--config", help="YAML with storage / gate.min_accuracy / gate.tolerance")
        flags.add_overrides(s)
        flags.add_json(s)
        if name == "promote":
            s.add_argument("model_id")
            s.add_argument("--force", action="store_true", help="skip the gate and the forward-only check")
    return p


def _models(config: ModelsAdminConfig) -> str:
    return model_artifact.models_root(config.storage or None)


def list_artifacts(config: ModelsAdminConfig) -> list[dict]:
    """Every complete model directory under ``models/``, oldest first."""
    models = _models(config)
    try:
        latest = publish.latest_id(models)
    except publish.NotPublishedError:
        latest = None
    earlier = {p["id"] for p in publish.history(models)}
    rows = []
    for name in storage.list_dir(models):
        if name == publish.LATEST or not storage.exists(storage.join(models, name, CARD_FILE)):
            continue  # the pointer, or a write that never finished
        card = model_gate.read_card(models, name)
        rows.append({"model_id": name, "architecture": card.architecture, "test_accuracy": model_gate.accuracy(card),
                     "created_at": card.created_at, "latest": name == latest, "previously_published": name in earlier})
    rows.sort(key=lambda r: (publish.id_timestamp(r["model_id"]) or 0.0, r["created_at"], r["model_id"]))
    return rows


def promote(config: ModelsAdminConfig, model_id: str, *, force: bool = False) -> dict:
    models = _models(config)
    publish.check_id(model_id)
    if not storage.exists(storage.join(models, model_id, CARD_FILE)):
        raise storage.StorageError(f"no exported model {model_id} under {models}")
    decision = model_gate.check(models, model_id, config.gate)
    published, reason = model_gate.publish_if_passing(models, model_id, config.gate, force=force)
    return {"model_id": model_id, "published": published, "reason": reason, "forced": force,
            "gate": decision.to_dict(), "latest": _latest_or_none(models)}


def rollback(config: ModelsAdminConfig) -> dict:
    models = _models(config)
    from_id, to_id = publish.rollback(models, manifest_name=CARD_FILE)
    return {"from": from_id, "to": to_id, "latest": _latest_or_none(models)}


def _latest_or_none(models: str) -> str | None:
    try:
        return publish.latest_id(models)
    except publish.NotPublishedError:
        return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = load_config(ModelsAdminConfig, yaml_path=args.config, overrides=args.overrides,
                         values={"storage": args.storage})
    if args.action == "list-artifacts":
        rows = list_artifacts(config)
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print(f"{'':2}{'model_id':<40} {'architecture':<18} {'test acc':>8}  created_at")
            for r in rows:
                acc = f"{r['test_accuracy']:.4f}" if r["test_accuracy"] is not None else "-"
                mark = "* " if r["latest"] else ("~ " if r["previously_published"] else "  ")
                print(f"{mark}{r['model_id']:<40} {r['architecture']:<18} {acc:>8}  {r['created_at']}")
            print("* models/LATEST   ~ published before (vitrine models rollback returns to the newest)")
        return 0
    try:
        out = promote(config, args.model_id, force=args.force) if args.action == "promote" else rollback(config)
    except (publish.NotPublishedError, publish.StaleArtifactError, storage.StorageError, ValueError) as exc:
        out = {"error": str(exc)}
    if args.json:
        print(json.dumps(out, indent=2))
    elif "error" in out:
        print(f"vitrine models {args.action}: {out['error']}", file=sys.stderr)
    elif args.action == "promote":
        print(f"{out['model_id']}: {out['reason']}; models/LATEST is {out['latest']}")
    else:
        print(f"models/LATEST rolled back from {out['from']} to {out['to']}")
    return 0 if out.get("published", "to" in out) else 1


if __name__ == "__main__":
    sys.exit(main())
