"""``edgekit fleet dashboard``: a web console over the fleet database.

Pages: the fleet (one row per device pseudonym), a device's time series, drift by device and
feature, the sample queue with labelling, and rollouts. Everything is served from this
package (no CDN): the pages are server-rendered HTML with SVG charts, and a small script
polls for live updates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.core.errors import InputError, MissingDependencyError

log = logging.getLogger("edgekit.fleet")


@dataclass(frozen=True)
class DashboardConfig:
    db: str
    fleet: str | None = None
    fleet_dir: Path | None = None
    host: str = "127.0.0.1"
    allow_hosts: tuple[str, ...] = ()
    """Host names beyond the bound address that requests may give (a reverse proxy's)."""
    port: int = 8080
    token: bytes | None = None
    bundles: tuple[Path, ...] = ()
    tls_cert: Path | None = None
    tls_key: Path | None = None


def open_dashboard(config: DashboardConfig) -> tuple[Any, dict[str, Any]]:
    """The ASGI app for ``config`` and what the start line says."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise MissingDependencyError("starlette", "fleet", "the dashboard") from None
    from edgekit.fleet.dashboard.app import Dashboard, build_app
    from edgekit.fleet.database import open_engine
    from edgekit.fleet.keys import load_collector_key
    from edgekit.fleet.queries import only_fleet
    from edgekit.runtime.serve.server import is_loopback

    exposed = not is_loopback(config.host)
    if exposed and config.token is None:
        raise InputError(f"--host {config.host} is reachable from the network: give --token-file FILE "
                         "(and reach "
                         "the dashboard over HTTPS: --tls-cert and --tls-key, or a proxy)")
    engine = open_engine(config.db, create=False)
    fleet = config.fleet or only_fleet(engine, config.db)
    references, classes = _from_bundles(config.bundles)
    board = Dashboard(
        engine, fleet, load_collector_key(fleet, config.fleet_dir), config.token, references,
        secure_cookie=exposed or config.tls_cert is not None,
        hosts=allowed_hosts(config.host, config.allow_hosts), classes=classes,
    )
    shown = str(engine.url.render_as_string(hide_password=True))
    return build_app(board), {"fleet": fleet, "db": shown, "token": config.token is not None}


def allowed_hosts(host: str, extra: tuple[str, ...] = ()) -> frozenset[str] | None:
    """The names a request's Host may give: the bound address and ``extra``, and on loopback
    the loopback names too; None when bound to every address (a token is required there)."""
    from edgekit.runtime.serve.server import is_loopback

    if host in ("0.0.0.0", "::", ""):
        return None
    names = {host.lower().strip("[]"), *(name.lower() for name in extra)}
    if is_loopback(host):
        names |= {"localhost", "127.0.0.1", "::1"}
    return frozenset(names)


ByModel = dict[tuple[str, int], Any]
"""Keyed by (model, version)."""


def _from_bundles(bundles: tuple[Path, ...]) -> tuple[ByModel, ByModel]:
    """By (model, version): each bundle's reference statistics (the baseline the pages compare
    with), and its class names (its labels, else "0", "1", ... for its class-score output)."""
    from edgekit.core.bundle import read_manifest

    references: ByModel = {}
    classes: ByModel = {}
    for path in bundles:
        manifest = read_manifest(path)
        key = (manifest.name, manifest.version)
        if manifest.reference is not None:
            references[key] = manifest.reference
        names = manifest.labels or _class_indices(manifest)
        if names:
            classes[key] = tuple(names)
    return references, classes


def _class_indices(manifest: Any) -> tuple[str, ...]:
    outputs = manifest.artifacts[0].outputs
    scores = next((o for o in outputs if o.name == manifest.primary_output), outputs[0])
    count = scores.shape[-1] if len(scores.shape) == 2 else None
    return tuple(str(i) for i in range(count)) if isinstance(count, int) and count > 1 else ()


def run_dashboard(config: DashboardConfig, started: Callable[[dict[str, Any]], None]) -> None:
    """Serve until Ctrl-C or SIGTERM."""
    import uvicorn

    from edgekit.runtime.serve.server import bind

    app, info = open_dashboard(config)
    sock = bind(config.host, config.port)  # bound here, so that port 0 is reported as the one given
    scheme = "https" if config.tls_cert else "http"
    info = {**info, "url": f"{scheme}://{config.host}:{sock.getsockname()[1]}/"}
    options: dict[str, Any] = {"log_level": "warning", "access_log": False, "lifespan": "off"}
    if config.tls_cert is not None:
        options.update(ssl_certfile=str(config.tls_cert), ssl_keyfile=str(config.tls_key))
    server = uvicorn.Server(uvicorn.Config(app, **options))
    started(info)
    server.run(sockets=[sock])
