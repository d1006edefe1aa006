"""Write DOT files and render them to SVG with Graphviz's `dot` when it is installed."""

from __future__ import annotations

import shutil
import subprocess
import warnings
from pathlib import Path


def write_graph(dot_text: str, path_stem: Path, *, svg: bool = True) -> list[Path]:
    """Write `<stem>.dot` and, when Graphviz is available, `<stem>.svg`; returns the files written."""
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    dot_path = path_stem.with_suffix(".dot")
    dot_path.write_text(dot_text)
    written = [dot_path]
    if not svg:
        return written
    exe = shutil.which("dot")
    if exe is None:
        warnings.warn(
            "Graphviz 'dot' is not installed, so only DOT files were written (apt-get install graphviz).",
            stacklevel=3,
        )
        return written
    svg_path = path_stem.with_suffix(".svg")
    result = subprocess.run([exe, "-Tsvg", str(dot_path), "-o", str(svg_path)], capture_output=True, text=True,
                            timeout=120)
    if result.returncode != 0:
        warnings.warn(f"Graphviz failed on {dot_path.name}: {result.stderr.strip()}", stacklevel=3)
        return written
    written.append(svg_path)
    return written
