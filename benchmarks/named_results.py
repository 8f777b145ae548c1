"""Results files that hold one entry per model or run (``{"models": {name: entry}}``), with their markdown
rendered from the whole JSON: adding an entry keeps the others, and the two files never disagree."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def record_entry(
    results_dir: Path,
    result_name: str,
    name: str,
    entry: Mapping[str, Any],
    markdown: Callable[[Mapping[str, Any]], str],
) -> None:
    """Add (or replace) ``name``'s entry in ``results_dir/result_name.json`` and rewrite the ``.md``."""
    path = results_dir / f"{result_name}.json"
    results = json.loads(path.read_text()) if path.exists() else {"models": {}}
    results.setdefault("models", {})[name] = dict(entry)
    results_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    (results_dir / f"{result_name}.md").write_text(markdown(results))
