"""Running an artifact in a child process, for models nobody vouches for.

Native engines parse an artifact in the process that loads it, and a crafted model can reach
native code. ``Model.load(..., isolate=True)`` keeps that out of the caller's process: the
parent verifies and decrypts as always, then hands the bytes over a pipe to a child that
builds the engine under a memory limit (``RLIMIT_AS``) and answers each call within a time
limit. A crash, a hang or running out of memory there is a ``RuntimeBackendError`` in the
parent, and the next call starts a fresh child. Nothing from the child is unpickled: its
answers are JSON, and arrays as a JSON header (dtype, shape) and raw bytes that must match it.
"""

from __future__ import annotations

import json
import multiprocessing
import signal
from collections.abc import Callable
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.core.errors import InferenceError, RuntimeBackendError
from edgekit.core.formats import ExecutionProvider
from edgekit.core.samples import Feed
from edgekit.runtime.backends.base import Backend, TensorInfo

if TYPE_CHECKING:
    from edgekit.runtime.engines import EngineCache


@dataclass(frozen=True)
class Isolation:
    """Limits of the child process: its address space, the time to load, the time per call.
    ``memory_mb`` defaults to 1 GB for the runtime plus four times the artifact, at least 2 GB."""

    memory_mb: int | None = None
    load_timeout_s: float = 120.0
    call_timeout_s: float = 30.0

    def memory_for(self, artifact_bytes: int) -> int:
        return self.memory_mb or max(2048, 1024 + 4 * (artifact_bytes >> 20))


@dataclass(frozen=True)
class Recipe:
    """What the child needs to build the same backend the parent would."""

    format: str
    content: bytes
    threads: int
    providers: tuple[ExecutionProvider, ...] = ()
    precision: str = "fp32"


class IsolatedBackend(Backend, register=False):  # type: ignore[call-arg]
    """A backend whose engine lives in a child process (see the module docstring)."""

    def __init__(self, recipe: Recipe, isolation: Isolation) -> None:  # type: ignore[override]
        self._recipe, self._limits = recipe, isolation
        self._memory_mb = isolation.memory_for(len(recipe.content))
        self._child: Any = None
        info = self._start()
        self._inputs = tuple(TensorInfo(**{**t, "shape": tuple(t["shape"])}) for t in info["inputs"])
        self._outputs = tuple(TensorInfo(**{**t, "shape": tuple(t["shape"])}) for t in info["outputs"])
        self._engine = f"{info['engine']}, isolated"
        self.provider = info["provider"]
        self.fallbacks = info["fallbacks"]

    def _start(self) -> dict[str, Any]:
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self._child = context.Process(
            target=_serve, args=(child_conn, self._recipe, self._memory_mb), daemon=True
        )
        self._child.start()
        child_conn.close()
        answer = self._answer(self._limits.load_timeout_s, "loading the model")
        if not answer.startswith(b"OK"):
            self._stop()
            raise RuntimeBackendError(
                f"the isolated model failed to load under its {self._memory_mb} MB memory limit: "
                + answer[2:].decode(errors="replace")
            )
        return json.loads(answer[2:])

    def run(self, feed: Feed) -> list[np.ndarray]:
        """One call in the child (which splits a fixed-batch model's batch itself)."""
        if self._child is None or not self._child.is_alive():
            self._start()  # the last call crashed it: a fresh one
        self._conn.send_bytes(pack(list(feed.values()), list(feed)))
        answer = self._answer(self._limits.call_timeout_s, "this call")
        if answer.startswith(b"ER"):
            raise InferenceError(answer[2:].decode(errors="replace"))
        try:
            return list(unpack(answer[2:]).values())
        except ValueError as exc:
            self._stop()
            raise RuntimeBackendError(
                f"the isolated model answered nonsense ({exc}); it was stopped"
            ) from None

    def _invoke(self, feed: Feed) -> list[np.ndarray]:
        return self.run(feed)

    def bare_call(self, feed: Feed) -> Callable[[], object]:
        return lambda: self.run(feed)

    def _answer(self, timeout: float, doing: str) -> bytes:
        try:
            if self._conn.poll(timeout):
                return self._conn.recv_bytes()
        except (EOFError, OSError):
            pass
        else:
            self._stop()
            raise RuntimeBackendError(
                f"the isolated model took over {timeout:g} s for {doing}; its process was stopped "
                "(the next call starts a new one)"
            )
        self._child.join(5)
        why = _death(self._child.exitcode, self._memory_mb)
        self._stop()
        raise RuntimeBackendError(f"the isolated model's process died during {doing} ({why}); "
                                  "the next call starts a new one")

    def _stop(self) -> None:
        if self._child is not None and self._child.is_alive():
            self._child.kill()
            self._child.join(5)
        self._conn.close()

    def close(self) -> None:
        self._stop()
        self._child = None


def _death(exitcode: int | None, memory_mb: int) -> str:
    if exitcode is not None and exitcode < 0:
        return f"{signal.Signals(-exitcode).name}"
    if exitcode == 3:
        return f"out of its {memory_mb} MB memory limit"
    return f"exit code {exitcode}"


def _serve(conn: Connection, recipe: Recipe, memory_mb: int) -> None:
    """The child: limit memory, build the backend, then answer calls until the pipe closes."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
    try:
        backend = build(recipe)
    except MemoryError:
        raise SystemExit(3) from None
    except Exception as exc:  # reported to the parent as one line
        conn.send_bytes(b"ER" + f"{type(exc).__name__}: {exc}".encode())
        return
    info = {
        "inputs": [asdict(t) for t in backend.inputs], "outputs": [asdict(t) for t in backend.outputs],
        "engine": backend.engine, "provider": backend.provider, "fallbacks": list(backend.fallbacks),
    }  # fmt: skip
    conn.send_bytes(b"OK" + json.dumps(info).encode())
    while True:
        try:
            request = conn.recv_bytes()
        except EOFError:
            return
        conn.send_bytes(_call(backend, request))


def _call(backend: Backend, request: bytes) -> bytes:
    try:
        outputs = backend.run(unpack(request))
    except MemoryError:
        raise SystemExit(3) from None
    except Exception as exc:  # the engine's message, for the parent's InferenceError
        return b"ER" + str(exc).encode()
    return b"OK" + pack(outputs, [str(index) for index in range(len(outputs))])


def pack(arrays: list[np.ndarray], names: list[str]) -> bytes:
    """Arrays as a length-prefixed JSON header (name, dtype, shape each) and their raw bytes."""
    arrays = [np.ascontiguousarray(a) for a in arrays]
    header = json.dumps([[n, a.dtype.str, a.shape] for n, a in zip(names, arrays, strict=True)]).encode()
    return len(header).to_bytes(4, "big") + header + b"".join(a.tobytes() for a in arrays)


def unpack(data: bytes) -> dict[str, np.ndarray]:
    """``pack``'s arrays back, refusing anything whose header does not match its bytes, or
    any dtype but numbers and bools (no objects). Raises ValueError."""
    size = int.from_bytes(data[:4], "big")
    try:
        header = json.loads(data[4 : 4 + size])
        arrays, offset = {}, 4 + size
        for name, dtype_str, shape in header:
            dtype = np.dtype(dtype_str)
            if dtype.kind not in "biufc" or any(not isinstance(d, int) or d < 0 for d in shape):
                raise ValueError(f"array {name!r}: {dtype} {shape}")
            count = int(np.prod(shape, dtype=np.int64))
            end = offset + count * dtype.itemsize
            if end > len(data):
                raise ValueError(f"array {name!r} claims more bytes than were sent")
            array = np.frombuffer(data, dtype, count=count, offset=offset).reshape(shape)
            arrays[str(name)] = array.copy()  # writable, and not a view of the message
            offset = end
    except (TypeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not a packed array message ({exc})") from None
    if offset != len(data):
        raise ValueError("trailing bytes after the arrays")
    return arrays


def build(recipe: Recipe, engines: EngineCache | None = None, trt_cache_dir: Path | None = None) -> Backend:
    """The backend for ``recipe``: what ``Model.load`` runs in process, and the child here."""
    from edgekit.runtime.backends import Placement, backend_for

    placement = Placement(recipe.providers, recipe.precision, engines, trt_cache_dir)
    return backend_for(recipe.format).place(recipe.content, recipe.threads, placement)
