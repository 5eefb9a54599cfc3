"""This process's memory, and what the machine has left, read from /proc and the cgroup.

Light on purpose: the benchmarks read their children's peaks with it, and an import that
allocated would show up in what they measure.
"""

from __future__ import annotations

from pathlib import Path


def status_kib(field: str) -> int | None:
    """A field of /proc/self/status in KiB (VmRSS, VmHWM); None where there is none."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None
    return next((int(line.split()[1]) for line in lines if line.startswith(f"{field}:")), None)


def resident_bytes() -> int:
    return (status_kib("VmRSS") or 0) * 1024


def peak_bytes() -> int:
    """This process's peak resident memory (VmHWM). The benchmarks read it inside each child:
    a child's ``ru_maxrss`` would start at the forking parent's, which Linux keeps across exec."""
    return (status_kib("VmHWM") or 0) * 1024


def available_bytes() -> int | None:
    """MemAvailable, or what the cgroup's limit leaves when that is less; None if unknown."""
    try:
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        available = int(meminfo["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return available
    return available if limit == "max" else min(available, int(limit) - used)
