"""A benchmark's results as a block between two markers in a Markdown file (docs/BENCHMARKS.md):
the block is replaced on every run, the rest of the file left as it is."""

from __future__ import annotations

from pathlib import Path


def write_block(path: str, text: str, begin: str, end: str, section: str) -> None:
    """Replace the block between the markers in ``path`` (or add it, under ``section``)."""
    p = Path(path)
    doc = p.read_text() if p.exists() else ""
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in doc and end in doc:
        head, rest = doc.split(begin, 1)
        doc = head + block + rest.split(end, 1)[1]
    else:
        if section not in doc:
            doc = doc.rstrip() + f"\n\n{section}\n"
        doc = doc.rstrip() + "\n\n" + block + "\n"
    p.write_text(doc)
