"""What every benchmark figure does last: lay it out, write the PNG (its folder made if need be), free it."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def save_figure(fig: Any, path: Path, dpi: int) -> None:
    """``fig`` (a matplotlib figure) laid out tightly and written to ``path``, then closed: scripts that draw
    many figures in one process must not keep them."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
