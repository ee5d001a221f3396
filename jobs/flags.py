"""The flags every command shares, with one meaning each across commands:

- ``--storage``: the storage root the command reads from and writes to (``$VITRINE_STORAGE`` or
  ``./.vitrine`` by default; ``s3://bucket/prefix`` on a cluster);
- ``--out``: the directory (or URI) this command writes its result into, for the commands whose
  result is not simply a new artifact under the storage root (a catalogue, a report, overlays).

``vitrine embed`` and ``vitrine build-index`` once took ``--out`` for the storage root they write
under; they now take ``--storage`` only and say so when given ``--out``.
"""

from __future__ import annotations

import argparse

STORAGE_HELP = "storage root URI (default $VITRINE_STORAGE or ./.vitrine)"


def add_storage(parser: argparse.ArgumentParser, **kwargs) -> None:
    parser.add_argument("--storage", help=STORAGE_HELP, **kwargs)


def add_overrides(parser: argparse.ArgumentParser) -> None:
    """``--set KEY=VALUE`` (repeatable): the last layer over defaults, the YAML file and the flags."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key (dotted for nested ones); repeatable")


def add_json(parser: argparse.ArgumentParser, help: str = "print the result as JSON") -> None:
    parser.add_argument("--json", action="store_true", help=help)


def refuse_renamed(parser: argparse.ArgumentParser, old: str, new: str, why: str) -> None:
    """``old`` is no longer a flag of this command: using it is an error that names ``new``."""

    class Renamed(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            parser.error(f"{old} is now {new} ({why})")

    parser.add_argument(old, action=Renamed, help=argparse.SUPPRESS)
