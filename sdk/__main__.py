"""``python -m edgekit`` is the ``edgekit`` command."""

from edgekit.cli import main

main(prog_name="edgekit")
