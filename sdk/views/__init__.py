"""How results look: rich tables for people, plain dicts for ``--json``. The CLI prints
through these and nothing else."""

from edgekit.views.bundles import (
    convert_json,
    mark,
    print_convert_summary,
    print_manifest,
    profiles_table,
    size,
)
from edgekit.views.fit import fit_json, print_fit
from edgekit.views.running import (
    generation_line,
    model_info,
    print_bench,
    print_run,
    run_result,
    tag_result,
)

__all__ = [
    "convert_json",
    "fit_json",
    "mark",
    "model_info",
    "print_bench",
    "generation_line",
    "print_convert_summary",
    "print_fit",
    "print_manifest",
    "print_run",
    "profiles_table",
    "run_result",
    "size",
    "tag_result",
]
