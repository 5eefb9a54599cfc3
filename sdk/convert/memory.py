"""Whether a conversion is likely to fit in this machine's memory, said before it starts.

The estimate is what the process holds now plus, per format, the peak a conversion was
measured to add per byte of float weights (``Converter.peak_per_weight_byte``). It is rough
(the graph's shape matters too), so it warns rather than refuses: the kernel's OOM killer
ends a conversion with no message at all, and 20 minutes in.
"""

from __future__ import annotations

from edgekit.converters import Converter
from edgekit.converters.source import SourceModel
from edgekit.core import memory
from edgekit.views.bundles import size
from edgekit.views.progress import Reporter


def warn_if_short(source: SourceModel, converters: list[Converter], reporter: Reporter) -> None:
    """One warning when the conversion's expected peak exceeds the memory available."""
    if not converters:
        return
    need = memory.resident_bytes() + max(c.peak_per_weight_byte for c in converters) * source.parameter_bytes
    available = memory.available_bytes()
    if available is not None and need > available:
        reporter.warn(
            f"this conversion may need about {size(int(need))} of memory and "
            f"{size(available)} is available; if it is killed, close other programs or "
            "convert on a machine with more memory"
        )
