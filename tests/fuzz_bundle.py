"""Coverage-guided fuzzing of the bundle reader with atheris (libFuzzer).

    python tests/fuzz_bundle.py -max_total_time=60 -rss_limit_mb=1024

Seeds with a real signed bundle; every input must end in an EdgekitError or a valid
result. Anything else, a crash, a timeout or memory over the limit stops the run with the
input saved as ``crash-*``, ``timeout-*`` or ``oom-*``.
"""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    import edgekit.archive  # noqa: F401 - instrumented: the zip checks
    from edgekit.bundle import parse_manifest, read_bundle
    from edgekit.errors import EdgekitError

sys.path.insert(0, str(Path(__file__).parent))
from test_bundle import CONTENT, _manifest  # noqa: E402

from edgekit.bundle import write_bundle  # noqa: E402

FOLDER = Path(tempfile.mkdtemp(prefix="edgekit-atheris-"))
atexit.register(shutil.rmtree, FOLDER, ignore_errors=True)
CASE = FOLDER / "case.ekb"


def seed() -> Path:
    """A corpus of one valid bundle, for libFuzzer to mutate from."""
    corpus = FOLDER / "corpus"
    corpus.mkdir()
    manifest = _manifest()
    write_bundle(corpus / "seed.ekb", manifest, {manifest.artifacts[0].path: CONTENT})
    return corpus


def one_input(data: bytes) -> None:
    CASE.write_bytes(data)
    try:
        read_bundle(CASE, lambda manifest, signature: None)
    except EdgekitError:
        pass
    try:
        parse_manifest(data, "fuzz")
    except EdgekitError:
        pass


if __name__ == "__main__":
    atheris.Setup([*sys.argv, str(seed())], one_input)
    atheris.Fuzz()
