"""The ε ledger: how much privacy budget this device has spent for a fleet, in a file the
device key MACs, with a release counter that only goes up.

The outbox keeps a witness of the same two numbers (releases, ε spent), written in the
transaction that stores each report. Each release writes the ledger before that
transaction commits, so a crash can leave the ledger one release ahead of the witness
(ε over-counted, which is safe), never behind. On start:

- ledger and witness agree, or the ledger is ahead: the ledger's numbers stand;
- the ledger is missing, cut short, edited or sealed with another key, while the witness
  shows releases: nothing more is released;
- the ledger is behind the witness (an older copy was put back): nothing more is released.

So deleting, truncating or rolling back either file never resets the budget. Deleting or
rolling back both together (say a restored disk image) cannot be told from a new device by
software alone; docs/privacy.md's threat model says what would.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgekit.core.atomic import atomic_write
from edgekit.core.errors import KeyProviderError
from edgekit.core.paths import edgekit_home
from edgekit.runtime.keys import fingerprint

log = logging.getLogger("edgekit.telemetry")
LEDGER_DIR = "privacy"


class LedgerState(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    fleet: str = Field(max_length=128)
    releases: int = Field(ge=0)
    spent: float = Field(ge=0, allow_inf_nan=False)

    def charged(self, epsilon: float) -> LedgerState:
        return LedgerState(fleet=self.fleet, releases=self.releases + 1, spent=self.spent + epsilon)


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    state: LedgerState
    device_key: str = Field(max_length=64)
    mac: str = Field(pattern=r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Witness:
    """The outbox's copy of the ledger's numbers."""

    releases: int
    spent: float


class LedgerBroken(Exception):
    """The ledger cannot be trusted; the message says why and what to do."""


def default_ledger(fleet: str) -> Path:
    return edgekit_home() / LEDGER_DIR / f"{fleet}.ledger"


class Ledger:
    """``keys``: the device key first, then any other key still live (a rotation under way)."""

    def __init__(self, path: Path, fleet: str, keys: list[bytes]) -> None:
        self.path = path
        self.fleet = fleet
        self._keys = keys
        self.state = LedgerState(fleet=fleet, releases=0, spent=0.0)
        self.stopped: str | None = None
        """Why nothing more is released, or None."""

    def open(self, witness: Witness | None) -> None:
        """Read the ledger and compare it with the outbox's witness; sets ``stopped`` when
        they show the ledger was deleted, damaged or rolled back."""
        restore = (
            f"put back the newest {self.path}; until then this device releases nothing for fleet {self.fleet}"
        )
        try:
            found = self._read()
        except LedgerBroken as exc:
            self.stopped = f"the ε ledger {self.path} {exc}: {restore}"
            return
        if found is None:
            if witness is not None and witness.releases > 0:
                self.stopped = (
                    f"the ε ledger {self.path} is missing, and the outbox shows {witness.releases} "
                    f"releases (ε {witness.spent:g} spent): {restore}"
                )
                return
            if witness is not None and witness.spent > 0:  # an outbox from before the ledger
                found = LedgerState(fleet=self.fleet, releases=1, spent=witness.spent)
                self._write(found)
            found = found or self.state
        elif witness is not None and found.releases < witness.releases:
            self.stopped = (
                f"the ε ledger {self.path} shows {found.releases} releases and the outbox "
                f"{witness.releases}: an older copy was put back; {restore}"
            )
            return
        self.state = found

    def charge(self, epsilon: float) -> LedgerState:
        """Count one release of ``epsilon``, durably, before the caller commits it."""
        charged = self.state.charged(epsilon)
        self._write(charged)
        self.state = charged
        return charged

    def _read(self) -> LedgerState | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise LedgerBroken(f"cannot be read ({exc.strerror})") from None
        try:
            record = _Record.model_validate_json(raw)
        except ValidationError:
            raise LedgerBroken("is cut short or malformed") from None
        by_id = {fingerprint(key): key for key in self._keys}
        key = by_id.get(record.device_key)
        if key is None:
            raise LedgerBroken(f"was sealed with device key {record.device_key}, not this device's")
        if not hmac.compare_digest(record.mac, _mac(key, record.state)):
            raise LedgerBroken("does not verify (it was edited)")
        if record.state.fleet != self.fleet:
            raise LedgerBroken(f"belongs to fleet {record.state.fleet}")
        return record.state

    def _write(self, state: LedgerState) -> None:
        key = self._keys[0]
        record = _Record(state=state, device_key=fingerprint(key), mac=_mac(key, state))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps(record.model_dump(), sort_keys=True).encode())


def reseal(folder: Path, old: bytes, new: bytes) -> None:
    """Re-MAC every ledger in ``folder`` under ``new`` (device key rotation)."""
    for path in sorted(folder.glob("*.ledger")):
        ledger = Ledger(path, path.stem, [new, old])
        try:
            state = ledger._read()
        except LedgerBroken as exc:
            log.warning("edgekit: the ε ledger %s %s; left as it is", path, exc)
            continue
        if state is not None:
            ledger._write(state)


def device_keys() -> list[bytes]:
    """This device's key, and the next one while a rotation is cut short; one line if none."""
    from edgekit.runtime.keys import FileKeyProvider, default_provider

    provider = default_provider()
    try:
        keys = [provider.device_key()]
    except KeyProviderError as exc:
        raise KeyProviderError(f"dp_epsilon keeps its ε ledger sealed with the device key: {exc}") from None
    if isinstance(provider, FileKeyProvider):
        pending = provider.path.with_name(provider.path.name + ".next")
        if pending.exists():
            keys.append(FileKeyProvider(pending).device_key())
    return keys


def _mac(key: bytes, state: LedgerState) -> str:
    body = json.dumps(state.model_dump(), sort_keys=True).encode()
    return hmac.new(key, b"edgekit/v1|epsilon-ledger|" + body, hashlib.sha256).hexdigest()
