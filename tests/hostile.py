"""Hostile files for the attack tests: zip bombs whose entries lie about their size, and a
child process that reports the peak memory an attempt took."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

from test_bundle import _manifest

from edgekit.core.bundle import sha256
from edgekit.core.manifest import Manifest
from edgekit.core.validation import updated

ZEROS = bytes(1 << 20)


def bomb(path: Path, entries: dict[str, bytes | int], declared: dict[str, int] | None = None) -> Path:
    """A zip whose entries hold ``bytes`` as given, or an int: that many MiB of deflated
    zeros. ``declared`` rewrites an entry's declared size, in the local header and the
    central directory, the way an attacker would."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            if isinstance(data, bytes):
                archive.writestr(name, data)
                continue
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w") as entry:
                for _ in range(data):
                    entry.write(ZEROS)
    for name, size in (declared or {}).items():
        _declare(path, name, size)
    return path


def _declare(path: Path, name: str, size: int) -> None:
    raw = bytearray(path.read_bytes())
    directory = struct.unpack_from("<I", raw, len(raw) - 22 + 16)[0]
    at = directory
    while raw[at : at + 4] == b"PK\x01\x02":
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", raw, at + 28)
        local = struct.unpack_from("<I", raw, at + 42)[0]
        if raw[at + 46 : at + 46 + name_len].decode() == name:
            struct.pack_into("<I", raw, at + 24, size)
            struct.pack_into("<I", raw, local + 22, size)
        at += 46 + name_len + extra_len + comment_len
    path.write_bytes(bytes(raw))


def unsigned_manifest(content: bytes, profile: str = "raspberry-pi-5", size: int | None = None) -> Manifest:
    """The test manifest for one artifact ``content`` (its size as given, or true)."""
    from edgekit.core.profiles import load_profile

    manifest = _manifest(content)
    size = len(content) if size is None else size
    entry = updated(manifest.artifacts[0], size=size, sha256=sha256(content))
    return updated(manifest, artifacts=(entry,), profile=load_profile(profile).model_dump(mode="json"))


_PEAK = """
import json, sys
from pathlib import Path
from edgekit.core.errors import EdgekitError
from edgekit.runtime import Model
from edgekit.runtime.store import Store

def peak_kb():  # this process's own high-water mark; ru_maxrss would include its parent's
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1])

base = peak_kb()
try:
    if sys.argv[1] == "install":
        Store().install(Path(sys.argv[2]), allow_unsigned=True)
    else:
        Model.load(Path(sys.argv[2]), allow_unsigned=True)
    outcome = "accepted"
except EdgekitError as exc:
    outcome = f"{type(exc).__name__}: {exc}"
extra = (peak_kb() - base) / 1024
print(json.dumps({"outcome": outcome, "extra_mb": extra}))
"""


def peak_attempt(how: str, bundle: Path, env: dict[str, str]) -> dict[str, object]:
    """``install`` or ``load`` the bundle in a fresh process: its outcome and the peak RSS
    it added, in MB. The peak is the process's VmHWM: Linux carries ``ru_maxrss`` over from
    the parent at exec, so in a large test process it would hide any spike."""
    done = subprocess.run(
        [sys.executable, "-c", _PEAK, how, str(bundle)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
