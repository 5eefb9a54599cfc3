"""CLI behaviour that needs no model: help, version, listing, light imports, bundle errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import edgekit
from edgekit.cli import main
from edgekit.core.profiles import shipped_profile_ids


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [prefix]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += _commands(command, (*prefix, name))
        else:
            found.append((*prefix, name))
    return found


@pytest.mark.parametrize("path", _commands(main), ids=lambda p: " ".join(p) or "edgekit")
def test_every_command_has_help_with_an_example_or_usage(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: ")
    assert len(result.output.splitlines()) > 3


def test_every_command_takes_json() -> None:
    for path in _commands(main)[1:]:
        command = main
        for name in path:
            command = command.commands[name]  # type: ignore[attr-defined]
        if not isinstance(command, click.Group):
            assert "--json" in {o for p in command.params for o in p.opts}, path


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.output.strip() == f"edgekit, version {edgekit.__version__}"


def test_targets_lists_every_shipped_profile() -> None:
    table = CliRunner().invoke(main, ["targets"])
    assert table.exit_code == 0
    as_json = CliRunner().invoke(main, ["targets", "--json"])
    profiles = json.loads(as_json.output)
    assert [p["id"] for p in profiles] == shipped_profile_ids()
    for profile_id in shipped_profile_ids():
        assert profile_id in table.output


def test_listing_and_the_runtime_import_no_heavy_libraries() -> None:
    code = (
        "import sys, edgekit.cli, edgekit.converters, edgekit.runtime.backends, edgekit.runtime.probe;"
        "from click.testing import CliRunner; CliRunner().invoke(edgekit.cli.main, ['targets']);"
        "heavy = [m for m in ('tensorflow', 'keras', 'onnxruntime', 'tf2onnx') if m in sys.modules];"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such bundle"),
        (b"hello", "not an edgekit bundle"),
    ],
)
def test_inspect_bad_bundles_one_line_exit_1(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "m.ekb"
    if content is not None:
        path.write_bytes(content)
    result = CliRunner().invoke(main, ["inspect", str(path)])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unexpected_failure_is_one_line_unless_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("edgekit.cli.building.load_all_profiles", boom)
    result = CliRunner().invoke(main, ["targets"])
    assert result.exit_code == 1
    assert result.stderr == "error: internal error: RuntimeError: boom (rerun with --debug for details)\n"
    debug = CliRunner().invoke(main, ["--debug", "targets"])
    assert isinstance(debug.exception, RuntimeError)


def test_missing_keys_name_the_command_that_creates_them(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    converted,  # type: ignore[no-untyped-def]
    publisher: Path,
) -> None:
    bundle = converted("fp32").output
    missing = tmp_path / "publisher.key"
    signed = CliRunner().invoke(main, ["sign", str(bundle), "--key", str(missing)])
    assert signed.exit_code == 1
    assert (
        signed.stderr.strip()
        == f"error: {missing}: no such key file; create it with: edgekit keys init --publisher -o {missing}"
    )
    public = publisher.with_suffix(".pub")  # mode 644, as a public key may be
    by_mistake = CliRunner().invoke(main, ["sign", str(bundle), "--key", str(public)])
    assert by_mistake.exit_code == 1 and by_mistake.stderr.strip() == (
        f"error: {public} is a public key (it verifies signatures, it cannot make them); "
        f"sign with the private key beside it: {publisher}"
    )
    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path / "new-device"))
    assert CliRunner().invoke(main, ["trust", "add", str(publisher.with_suffix(".pub"))]).exit_code == 0
    installed = CliRunner().invoke(main, ["install", str(bundle)])
    assert installed.exit_code == 1 and len(installed.stderr.strip().splitlines()) == 1
    assert installed.stderr.rstrip().endswith(
        "device.key: no such key file; create it with: edgekit keys init --device"
    )


def test_tables_fit_80_columns_in_a_pipe() -> None:
    lines = CliRunner().invoke(main, ["targets"]).output.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80
    assert all("…" not in line for line in lines)  # nothing cut short
