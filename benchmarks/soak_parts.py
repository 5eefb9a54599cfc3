"""The soak's parts that are not the fleet: a CPU meter by role, read from /proc, and a
database disk that can be filled."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any


class CpuMeter:
    """CPU seconds of processes by role, from /proc, summed over every process seen."""

    def __init__(self) -> None:
        self.seen: dict[int, tuple[str, float]] = {}
        self.tick = os.sysconf("SC_CLK_TCK")

    def sample(self, roles: dict[int, str]) -> None:
        for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
            role = roles.get(pid) or self._postgres(pid)
            if role is None:
                continue
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            self.seen[pid] = (role, (int(fields[11]) + int(fields[12])) / self.tick)

    @staticmethod
    def _postgres(pid: int) -> str | None:
        try:
            return "postgresql" if os.readlink(f"/proc/{pid}/exe").endswith("/postgres") else None
        except OSError:
            return None

    def by_role(self) -> dict[str, float]:
        total: dict[str, float] = {}
        for role, seconds in self.seen.values():
            total[role] = total.get(role, 0.0) + seconds
        return total


class DatabaseDisk:
    """A tmpfs that holds the soak database's tables, so that its disk can fill: shrunk to what
    it holds, the next page PostgreSQL writes there fails with 'No space left on device'.
    Mounting needs root; without it the soak runs without this fault and says so."""

    ROOMY = "16g"  # a limit, not memory taken: tmpfs holds what is written

    def __init__(self, path: Path) -> None:
        self.path = path
        self.mounted = False

    def __enter__(self) -> DatabaseDisk:
        if os.geteuid() == 0:
            self.path.mkdir(parents=True, exist_ok=True)
            mount = ["mount", "-t", "tmpfs", "-o", f"size={self.ROOMY}", "tmpfs", str(self.path)]
            self.mounted = subprocess.run(mount, capture_output=True).returncode == 0
        if self.mounted:
            import pwd

            user = pwd.getpwnam("postgres")  # LocalPostgres runs the server as postgres under root
            os.chown(self.path, user.pw_uid, user.pw_gid)
        return self

    def fill(self) -> None:
        """Shrink to what the disk holds plus one page. PostgreSQL keeps writing while this
        runs, and tmpfs refuses a size below what it holds, so a refusal is measured again."""
        for _ in range(50):
            stat = os.statvfs(self.path)
            if self._resize(str((stat.f_blocks - stat.f_bfree) * stat.f_frsize + stat.f_frsize)):
                return
        raise RuntimeError(f"could not shrink the tmpfs at {self.path} to what it holds")

    def clear(self) -> None:
        if not self._resize(self.ROOMY):
            raise RuntimeError(f"could not grow the tmpfs at {self.path} back to {self.ROOMY}")

    def _resize(self, size: str) -> bool:
        remount = ["mount", "-o", f"remount,size={size}", str(self.path)]
        return subprocess.run(remount, capture_output=True).returncode == 0

    def __exit__(self, *exc: object) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
        shutil.rmtree(self.path.parent, ignore_errors=True)


def soak_database(postgres: Any, disk: DatabaseDisk) -> str:
    """The soak's database, its tables on ``disk`` when that could be mounted."""
    import sqlalchemy as sa

    from edgekit.fleet import open_engine

    if not disk.mounted:
        return str(postgres.create_database("soak"))
    engine = open_engine(postgres.url).execution_options(isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sa.text(f"CREATE TABLESPACE soak_disk LOCATION '{disk.path}'"))
        connection.execute(sa.text("CREATE DATABASE soak TABLESPACE soak_disk"))
    engine.dispose()
    return str(postgres.url.rsplit("/", 1)[0] + "/soak")
