"""Optional matplotlib figures, embedded in self-contained HTML pages as PNG.

matplotlib is the optional ``fleet`` extra: without it a page says how to get its plots.
"""

from __future__ import annotations

import base64
import io
from typing import Any


def pyplot() -> Any | None:
    """matplotlib.pyplot on the file-only Agg backend, or None when it is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def missing(what: str) -> str:
    return f"<p>Install matplotlib (pip install 'edgekit[fleet]') for the {what}.</p>"


def png_img(figure: Any, alt: str = "") -> str:
    """The figure as an inline <img>; the figure is closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return f'<img alt="{alt}" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'
