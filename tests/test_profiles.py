from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from edgekit.cli import main
from edgekit.core.errors import ProfileError
from edgekit.core.profiles import load_all_profiles, load_profile, shipped_profile_ids

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {
    "jetson-nano", "jetson-xavier-nx", "jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin",
    "raspberry-pi-4", "raspberry-pi-5", "x86-gateway", "generic-arm64",
}  # fmt: skip


def test_every_shipped_profile_loads_and_matches_its_file_name() -> None:
    profiles = load_all_profiles()
    assert {p.id for p in profiles} == set(shipped_profile_ids())
    assert REQUIRED <= set(shipped_profile_ids())
    for p in profiles:
        assert p.budget.model_memory_mb < p.hardware.ram_mb
        assert p.budget.model_storage_mb < p.hardware.storage_gb * 1024
        for fmt in p.runtime.formats:
            assert p.runtime.precisions_for(fmt), (p.id, fmt)


@pytest.mark.parametrize("profile_id", sorted(REQUIRED))
def test_hardware_figures_carry_a_source_comment(profile_id: str) -> None:
    text = (ROOT / "device_configs" / f"{profile_id}.toml").read_text()
    lines = {line.split("=")[0].strip(): line for line in text.splitlines() if "=" in line}
    for key in ("cpu", "ram_mb"):
        assert "#" in lines[key], f"{profile_id}: {key} has no source comment"


def test_jetson_profiles_put_the_gpu_first() -> None:
    for p in load_all_profiles():
        if p.id.startswith("jetson-"):
            assert p.accelerator.kind == "cuda" and p.accelerator.tensorrt_version
            assert p.runtime.formats[0] == "onnx"  # TFLite has no GPU path on Jetson
            assert p.runtime.execution_providers[0] == "TensorrtExecutionProvider"


def test_unknown_id_lists_the_known_ones_and_suggests() -> None:
    with pytest.raises(ProfileError) as err:
        load_profile("raspberry-pi5")
    message = str(err.value)
    assert "Did you mean 'raspberry-pi-5'" in message
    for profile_id in REQUIRED:
        assert profile_id in message


def test_user_profile_file_is_accepted(write_profile) -> None:  # type: ignore[no-untyped-def]
    profile = load_profile(write_profile(model_storage_mb=1.5))
    assert profile.id == "custom"
    assert profile.budget.model_storage_mb == 1.5


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("cpu_cores = 4", 'cpu_cores = "4"'), "key 'hardware.cpu_cores': input should be a valid integer"),
        (("threads = 4", "threads = 4\nturbo = true"), "unknown key 'runtime.turbo'"),
        (("model_memory_mb = 512\n", ""), "missing key 'budget.model_memory_mb'"),
        (('tflite = ["int8"', 'tflite = ["int9"'), "key 'runtime.precisions.tflite.0'"),
        (('cpu_arch = "aarch64"', 'cpu_arch = "sparc"'), "key 'hardware.cpu_arch'"),
        (("[budget]", "[budget"), "not valid TOML"),
    ],
)
def test_malformed_profile_names_the_file_and_key(
    tmp_path: Path, edit: tuple[str, str], expected: str
) -> None:
    text = (ROOT / "device_configs" / "raspberry-pi-5.toml").read_text()
    assert edit[0] in text
    path = tmp_path / "broken.toml"
    path.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_cuda_profile_without_capability_is_rejected(tmp_path: Path) -> None:
    text = (ROOT / "device_configs" / "jetson-orin-nano.toml").read_text()
    path = tmp_path / "gpu.toml"
    path.write_text("\n".join(line for line in text.splitlines() if not line.startswith("cuda_compute")))
    with pytest.raises(ProfileError, match="cuda_compute_capability"):
        load_profile(path)


def test_cli_target_errors_are_usage_errors_on_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["convert", str(tmp_path / "m.keras"), "--target", "pi-9"])
    assert result.exit_code == 2
    assert "unknown device profile 'pi-9'" in result.output
    assert "raspberry-pi-5" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["convert", "m.keras", "--target", "jetson-orin"],
         "Did you mean 'jetson-orin-nano' or 'jetson-orin-nx'?"),
        (["convert", "m.keras", "--target", "raspbery-pi-5"], "Did you mean 'raspberry-pi-5'"),
        (["fleet", "collect"], "Missing option '--broker'. (see edgekit fleet collect --help)"),
        (["--bogus"], "No such option '--bogus'. (see edgekit --help)"),
        (["conver"], "No such command 'conver'. Did you mean 'convert'? (see edgekit --help)"),
    ],
)  # fmt: skip
def test_usage_errors_are_one_line_and_suggest_what_was_meant(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, args, prog_name="edgekit")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert message in result.stderr


def test_short_names_people_type_are_profiles_too() -> None:
    assert load_profile("rpi4").id == "raspberry-pi-4" and load_profile("orin-nano").id == "jetson-orin-nano"
