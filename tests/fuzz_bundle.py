"""Coverage-guided fuzzing of the bundle reader with atheris (libFuzzer).

    python tests/fuzz_bundle.py -max_total_time=30 -rss_limit_mb=0

Seeds with a real signed bundle; every input must end in an EdgekitError or a valid
result. Anything else, a crash, a timeout or memory over the limit stops the run with the
input saved as ``crash-*`` or ``timeout-*``; the address space is capped at 2 GB, so an input
that takes more memory ends in a MemoryError, a crash like any other.
"""

from __future__ import annotations

import atexit
import resource
import shutil
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    import edgekit.core.archive  # noqa: F401 - instrumented: the zip checks
    from edgekit.core.bundle import parse_manifest, read_bundle
    from edgekit.core.errors import EdgekitError

sys.path.insert(0, str(Path(__file__).parent))
from test_bundle import CONTENT, _manifest  # noqa: E402

from edgekit.core.bundle import write_bundle  # noqa: E402

FOLDER = Path(tempfile.mkdtemp(prefix="edgekit-atheris-"))
atexit.register(shutil.rmtree, FOLDER, ignore_errors=True)
CASE = FOLDER / "case.ekb"
MEMORY_LIMIT = 2 << 30


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
    # The memory cap, enforced here: a MemoryError is a finding like any exception. libFuzzer's
    # own -rss_limit_mb reads ru_maxrss, which Linux carries over from the parent process.
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    atheris.Setup([*sys.argv, str(seed())], one_input)
    atheris.Fuzz()
