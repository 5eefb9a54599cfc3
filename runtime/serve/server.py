"""Start the REST and gRPC servers over one repository, and drain both on SIGTERM."""

from __future__ import annotations

import asyncio
import importlib
import ipaddress
import logging
import resource
import signal
import socket
import ssl
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.core.errors import EdgekitError, InputError, MissingDependencyError, StoreError
from edgekit.runtime.serve.batching import BatchSettings
from edgekit.runtime.serve.protocol import Limits
from edgekit.runtime.serve.repository import Repository, Source, source_of

if TYPE_CHECKING:
    import grpc
    import uvicorn

    from edgekit.runtime.telemetry import Telemetry

log = logging.getLogger("edgekit.serve")


@dataclass(frozen=True)
class TLS:
    cert: Path
    key: Path
    client_ca: Path | None = None
    """With it, clients must present a certificate it signed (mutual TLS)."""


@dataclass(frozen=True)
class ServeConfig:
    models: tuple[str, ...] = ()
    """Store names or bundle paths; empty: every model in the store, and new ones as installed."""
    host: str = "127.0.0.1"
    port: int = 8000
    """REST port; 0 picks a free one (the start-up information says which)."""
    grpc_port: int | None = 8001
    """None: no gRPC."""
    token: bytes | None = None
    tls: TLS | None = None
    batch: BatchSettings = BatchSettings()
    per_model: Mapping[str, BatchSettings] = field(default_factory=dict)
    limits: Limits = Limits()
    timeout_s: float = 30.0
    """Per request: the body must arrive, and the answer come, within it."""
    drain_s: float = 30.0
    poll_s: float = 0.5
    """How often the store's active versions are checked."""
    load: Mapping[str, Any] = field(default_factory=dict)
    """Keyword arguments for every ``Model.load`` (threads, format, allow_unsigned, ...)."""
    telemetry: Callable[[], Telemetry] | None = None
    """Makes one ``Telemetry`` per loaded model version."""

    def settings(self, name: str) -> BatchSettings:
        return self.per_model.get(name, self.batch)


def check_exposure(config: ServeConfig) -> None:
    """Off loopback, a token or mutual TLS is required: a model server is not an open door."""
    if is_loopback(config.host) or config.token or (config.tls and config.tls.client_ca):
        return
    raise InputError(
        f"--host {config.host} is reachable from the network: give --token-file FILE, or mutual TLS "
        "with --tls-cert, --tls-key and --tls-client-ca"
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def open_repository(config: ServeConfig) -> Repository:
    """Load (and warm) every model the config names; follow the store's activations."""
    from edgekit.runtime.model import Model
    from edgekit.runtime.store import Store

    store: Store | None = None
    sources = [source_of(text) for text in config.models]
    if not sources or any(s.store for s in sources):
        store = Store()
    if not sources:
        assert store is not None
        sources = [Source(name, name, True) for name, active in sorted(store.active().items()) if active]
        if not sources:
            raise StoreError("the store has no active model: install one with edgekit install BUNDLE, "
                             "or name bundle files to serve")

    def loader(where: str, version: int | None) -> Model:
        telemetry = config.telemetry() if config.telemetry else None
        return Model.load(where, version=version, warmup=True, telemetry=telemetry, **config.load)

    repository = Repository(
        sources, loader, config.settings, store.active if store else None, follow_new=not config.models
    )
    if store is not None:
        repository.watch(config.poll_s)
    return repository


STUBS_PROTOBUF = "7.35.1"
"""The protobuf the shipped gRPC stubs were generated with, the oldest runtime they accept."""

SERVER_LIBRARIES = (("starlette", "starlette"), ("uvicorn", "uvicorn"), ("grpc", "grpcio"),
                    ("google.protobuf", "protobuf"))
"""(module, package) pairs that edgekit[serve] installs."""


def check_installed() -> None:
    for module, package in SERVER_LIBRARIES:
        try:
            importlib.import_module(module)
        except ImportError:
            raise MissingDependencyError(package, "serve", "edgekit serve") from None


def serve(config: ServeConfig, started: Callable[[dict[str, Any]], None]) -> None:
    """Serve until SIGTERM or SIGINT, then finish in-flight requests (up to ``drain_s``)."""
    check_installed()
    import uvicorn

    from edgekit.runtime.serve.rest import build_app

    check_exposure(config)
    repository = open_repository(config)
    grpc_server = None
    try:
        app = build_app(repository, config.limits, config.timeout_s, config.token)
        sock = bind(config.host, config.port)
        grpc_server, grpc_port = _grpc(config, repository) if config.grpc_port is not None else (None, None)
        info = _information(config, repository, sock.getsockname()[1], grpc_port)
        server = _announcing(uvicorn.Config(app, **_uvicorn_options(config)), lambda: started(info))
        with _sigterm_returns():
            server.run(sockets=[sock])
    finally:
        if grpc_server is not None:
            grpc_server.stop(config.drain_s).wait()
        repository.close()


@contextmanager
def _sigterm_returns() -> Iterator[None]:
    """uvicorn drains on SIGTERM, then raises the signal again for the handler it found: a
    handler that returns lets gRPC drain and the engines close too, and the exit be 0."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _announcing(config: uvicorn.Config, on_started: Callable[[], None]) -> uvicorn.Server:
    """uvicorn's Server, calling ``on_started`` once it accepts connections."""
    import uvicorn

    class Announcing(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if not self.should_exit:
                on_started()

    return Announcing(config)


def _uvicorn_options(config: ServeConfig) -> dict[str, Any]:
    connections = connection_limit(config.limits.max_connections)
    options: dict[str, Any] = {
        "log_config": None, "access_log": False, "lifespan": "off", "server_header": False,
        "timeout_graceful_shutdown": config.drain_s, "timeout_keep_alive": 5,
        "http": guarded_protocol(connections, config.limits.header_timeout_s),
        "limit_concurrency": connections,
    }  # fmt: skip
    if config.tls is not None:
        options.update(ssl_certfile=str(config.tls.cert), ssl_keyfile=str(config.tls.key))
        if config.tls.client_ca is not None:
            options.update(ssl_ca_certs=str(config.tls.client_ca), ssl_cert_reqs=ssl.CERT_REQUIRED)
    return options


def connection_limit(wanted: int) -> int:
    """``wanted``, kept below the open-files limit: a server out of file handles fails its
    store watcher and its model loads, not only the new connections."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(1, min(wanted, soft - 128)) if soft != resource.RLIM_INFINITY else wanted


def guarded_protocol(max_connections: int, header_timeout_s: float) -> type[asyncio.Protocol] | str:
    """uvicorn's httptools protocol with what it lacks against slow and many clients: a
    deadline for each request's headers, and a cap on open connections (over it, a new one
    is closed at once, so its file handle is free again)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # edgekit[serve] installs httptools; without it, uvicorn's own choice
        log.warning("httptools is not installed: no header deadline or connection cap; "
                    "pip install 'edgekit[serve]'")
        return "auto"

    class Guarded(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                log.warning("closing a connection: %d are open, the limit is %d", len(self.connections) - 1,
                            max_connections)  # fmt: skip
                transport.abort()
                return
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._deadline is None:
                self._deadline = self.loop.call_later(header_timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.abort()

    return Guarded


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (port 0: one the kernel picks); a busy port is one line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say so, and without it
    # a response's header and body writes wait for the client's delayed ACK (measured: 44 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port") from None
    return sock


def _grpc_api() -> tuple[Any, Callable[..., None]]:
    """The gRPC servicer and its registration; an older protobuf than the shipped stubs were
    generated for (tritonclient pins protobuf < 7) is one line, naming the way out."""
    from google.protobuf import __version__ as protobuf_version
    from google.protobuf.runtime_version import VersionError

    try:
        from edgekit.runtime.serve.grpc_api import Servicer, add_service
    except VersionError:
        raise EdgekitError(
            f"edgekit serve's gRPC stubs need protobuf {STUBS_PROTOBUF} or newer, and {protobuf_version} is "
            f"installed: pip install 'protobuf>={STUBS_PROTOBUF},<8', or serve REST alone with --no-grpc"
        ) from None
    return Servicer, add_service


def _grpc(config: ServeConfig, repository: Repository) -> tuple[grpc.Server, int]:
    import grpc

    Servicer, add_service = _grpc_api()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="serve-grpc"),
        options=[("grpc.max_receive_message_length", config.limits.max_body_bytes), ("grpc.so_reuseport", 0)],
        maximum_concurrent_rpcs=sum(config.settings(n).max_queue for n in repository.names()) + 32,
    )
    add_service(server, Servicer(repository, config.limits, config.timeout_s, config.token))
    address = (
        f"[{config.host}]:{config.grpc_port}" if ":" in config.host else f"{config.host}:{config.grpc_port}"
    )
    try:
        if config.tls is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, _grpc_credentials(config.tls))
    except RuntimeError:
        port = 0
    if not port:
        raise InputError(f"cannot listen for gRPC on {address}; pick another --grpc-port")
    server.start()
    return server, port


def _grpc_credentials(tls: TLS) -> grpc.ServerCredentials:
    import grpc

    ca = tls.client_ca.read_bytes() if tls.client_ca else None
    return grpc.ssl_server_credentials(
        [(tls.key.read_bytes(), tls.cert.read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


def _information(
    config: ServeConfig, repository: Repository, port: int, grpc_port: int | None
) -> dict[str, Any]:
    scheme = "https" if config.tls else "http"
    host = f"[{config.host}]" if ":" in config.host else config.host
    models = []
    for name in repository.names():
        served = repository.get(name)
        info = served.model.info
        batch = served.batcher.settings.max_batch if served.batcher.can_batch else 1
        models.append({
            "name": name, "version": served.version, "format": info.format, "precision": info.precision,
            "provider": info.provider, "max_batch": batch,
        })
    return {
        "rest": f"{scheme}://{host}:{port}", "grpc": f"{host}:{grpc_port}" if grpc_port else None,
        "models": models, "token": config.token is not None,
        "mutual_tls": bool(config.tls and config.tls.client_ca),
    }  # fmt: skip
