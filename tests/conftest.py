"""Shared fixtures: a digits CNN trained once per session, and its data, made on the spot."""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # tests/legacy runs in a slim virtualenv: the legacy runtime, pytest, no fuzzing
    settings = None

from edgekit.convert import ConvertOptions, convert
from edgekit.core.profiles import load_profile
from edgekit.core.signing import Trust
from edgekit.runtime.keys import create_device_key
from edgekit.testing.postgres import LocalPostgres, find_postgres

if TYPE_CHECKING:
    from edgekit.convert import ConvertResult

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]


if settings is not None:
    _FUZZ = {"deadline": 5000, "suppress_health_check": [HealthCheck.too_slow], "print_blob": True}
    """Every fuzzed input must end within 5 s (they take milliseconds); the atheris harness caps memory."""
    settings.register_profile("default", max_examples=40, **_FUZZ)
    settings.register_profile("slow", max_examples=300, **_FUZZ)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow (CI does)")


def pytest_configure(config: pytest.Config) -> None:
    """The property-based (Hypothesis) suites: 40 examples each by default, 300 with --runslow."""
    if settings is not None:
        settings.load_profile("slow" if config.getoption("--runslow") else "default")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def _load_example_module(name: str, path: Path):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


digits = _load_example_module("quickstart_digits", ROOT / "examples" / "quickstart" / "digits.py")


@pytest.fixture(scope="session", autouse=True)
def publisher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temporary EDGEKIT_HOME whose trust store accepts one publisher key; its private key."""
    from edgekit.core.signing import Trust, create_publisher_key

    home = tmp_path_factory.mktemp("edgekit-home")
    os.environ["EDGEKIT_HOME"] = str(home)
    key = tmp_path_factory.mktemp("keys") / "publisher.key"
    public, _ = create_publisher_key(key)
    Trust().add(public)
    return key


@pytest.fixture
def home(tmp_path: Path, publisher: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh device: EDGEKIT_HOME with a device key and the session's publisher trusted."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("EDGEKIT_HOME", str(home))
    create_device_key(home / "device.key")
    Trust(home / "trust").add(publisher.with_suffix(".pub"))
    return home


@pytest.fixture(scope="session")
def digits_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """digits.keras, calib.npz and eval.npz, trained on scikit-learn's digits."""
    return digits.train_digits(tmp_path_factory.mktemp("digits"), epochs=20)


@pytest.fixture(scope="session")
def intent_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small transformer intent classifier trained on generated home commands, its WordPiece
    tokenizer and .jsonl data (tests/text_models.py)."""
    from text_models import intent_classifier

    return intent_classifier(tmp_path_factory.mktemp("intent"), vocab=300)


@pytest.fixture(scope="session")
def tagger_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small transformer slot tagger (a tag per word) and its files (tests/text_models.py)."""
    from text_models import slot_tagger

    return slot_tagger(tmp_path_factory.mktemp("slots"), vocab=400)


@pytest.fixture(scope="session")
def digits_eval(digits_files: dict[str, Path]) -> tuple[np.ndarray, np.ndarray]:
    with np.load(digits_files["evaluation"]) as data:
        return data["x"], data["y"]


@pytest.fixture(scope="session")
def digits_h5(digits_files: dict[str, Path]) -> Path:
    import keras

    path = digits_files["model"].with_suffix(".h5")
    keras.models.load_model(digits_files["model"]).save(path)
    return path


@pytest.fixture(scope="session")
def digits_saved_model(digits_files: dict[str, Path]) -> Path:
    import keras

    path = digits_files["model"].parent / "saved_model"
    keras.models.load_model(digits_files["model"]).export(str(path), verbose=False)
    return path


Convert = Callable[..., "ConvertResult"]


@pytest.fixture(scope="session")
def converted(
    digits_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, publisher: Path
) -> Convert:
    """Convert the digits CNN once per (precision, profile) for the whole session."""
    cache: dict[tuple[str, str], Any] = {}

    def get(precision: str, profile: str = "raspberry-pi-5") -> Any:
        if (precision, profile) not in cache:
            out = tmp_path_factory.mktemp("bundles") / f"digits-{precision}-{profile}.ekb"
            options = ConvertOptions(
                model=digits_files["model"], profile=load_profile(profile), output=out, format="tflite",
                precision=precision, calibration=digits_files["calibration"],
                evaluation=digits_files["evaluation"], name="digits", version=2, sign_key=publisher,
            )
            cache[precision, profile] = convert(options)
        return cache[precision, profile]

    return get


@pytest.fixture(scope="session")
def onnx_converted(
    digits_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, publisher: Path
) -> Convert:
    cache: dict[tuple[str, str, str], Any] = {}

    def get(precision: str, method: str = "minmax", profile: str = "x86-gateway") -> Any:
        key = (precision, method, profile)
        if key not in cache:
            out = tmp_path_factory.mktemp("onnx") / f"{precision}-{method}-{profile}.ekb"
            cache[key] = convert(ConvertOptions(
                model=digits_files["model"], profile=load_profile(profile), output=out, format="onnx",
                precision=precision, calibration=digits_files["calibration"],
                evaluation=digits_files["evaluation"], calibration_method=method, sign_key=publisher,
            ))
        return cache[key]

    return get


@pytest.fixture
def write_profile(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Write a user profile TOML derived from a shipped one, with some values replaced."""
    import tomli_w
    import tomllib

    def write(base: str = "raspberry-pi-5", **budget: float) -> Path:
        data = tomllib.loads((ROOT / "device_configs" / f"{base}.toml").read_text())
        data["id"] = "custom"
        data["budget"].update(budget)
        path = tmp_path / "custom.toml"
        path.write_text(tomli_w.dumps(data))
        return path

    return write


@pytest.fixture(scope="session")
def meter(
    digits_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, publisher: Path
) -> dict[int, Path]:
    """Two versions of one model that answer differently: v1 fp32, v2 dynamic int8."""
    folder = tmp_path_factory.mktemp("meter")
    return {
        version: convert(ConvertOptions(
            model=digits_files["model"], profile=load_profile("x86-gateway"), output=folder / f"meter-v{version}.ekb",
            format="onnx", precision=precision, name="meter", version=version, sign_key=publisher,
        )).output
        for version, precision in ((1, "fp32"), (2, "dynamic"))
    }  # fmt: skip


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    """One PostgreSQL server for the session (initdb in a temp folder, pg_ctl on a free port);
    each test that needs it makes a database of its own."""
    if find_postgres() is None:
        pytest.skip("PostgreSQL is not installed (.ci/run installs it)")
    with LocalPostgres() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh fleet database URL on each engine."""
    if request.param == "sqlite":
        return str(tmp_path / "fleet.sqlite")
    server: LocalPostgres = request.getfixturevalue("postgres")
    return server.create_database(f"t{time.monotonic_ns()}")
