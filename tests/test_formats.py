"""One vocabulary of formats and precisions: the profiles, the converters, both CLI commands
and the runtime's TensorRT flags use the same definition."""

from __future__ import annotations

from typing import ClassVar, get_args

import click
import pytest

from edgekit.cli import main
from edgekit.converters import Converter, converter_for, format_choices, precision_choices
from edgekit.core.errors import InputError
from edgekit.core.formats import FORMATS, PRECISIONS, TENSORRT_FP16, TENSORRT_INT8
from edgekit.core.profiles import Precisions, RuntimePreferences
from edgekit.runtime.backends.onnx import ProviderSettings, provider_options


def _choices(command: str, option: str) -> tuple[str, ...]:
    params = {p.opts[0]: p for p in main.commands[command].params}  # type: ignore[union-attr]
    kind = params[option].type
    assert isinstance(kind, click.Choice)
    return tuple(kind.choices)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_precision_unknown_to_a_converter_is_refused_in_one_line(fmt: str) -> None:
    with pytest.raises(InputError) as refused:
        converter_for(fmt).check_precision("int2")
    message = str(refused.value)
    assert "\n" not in message and f"{fmt} has no precision 'int2'" in message
    assert all(p in message for p in converter_for(fmt).precisions)


def test_every_converter_uses_the_shared_vocabulary() -> None:
    assert set(Converter.registry) == set(FORMATS)
    for converter in Converter.registry.values():
        assert set(converter.precisions) <= set(PRECISIONS)
        assert converter.calibrated_precisions <= set(converter.precisions)


def test_a_converter_with_a_precision_outside_the_vocabulary_cannot_register() -> None:
    with pytest.raises(TypeError, match="edgekit.core.formats"):

        class Int2Converter(Converter):  # noqa: F841
            format: ClassVar = "int2-format"  # type: ignore[assignment]
            precisions: ClassVar = ("int2",)  # type: ignore[assignment]
            source_kinds: ClassVar = frozenset({"onnx"})

            def convert(self, *args: object) -> None:  # type: ignore[override]
                raise NotImplementedError


def test_convert_and_fit_accept_the_same_precisions_and_formats() -> None:
    assert _choices("convert", "--precision") == precision_choices() == ("auto", *PRECISIONS)
    assert _choices("fit", "--precision") == PRECISIONS
    assert _choices("convert", "--format") == (*format_choices(), "both")
    assert _choices("fit", "--format") == format_choices() == tuple(sorted(FORMATS))


def test_profiles_take_their_precisions_and_formats_from_the_vocabulary() -> None:
    def literal_values(annotation: object) -> set[str]:
        return {v for arg in get_args(annotation) for v in (get_args(arg) or (arg,)) if isinstance(v, str)}

    assert literal_values(Precisions.model_fields["onnx"].annotation) == set(PRECISIONS)
    assert literal_values(RuntimePreferences.model_fields["formats"].annotation) == set(FORMATS)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_tensorrt_flags_follow_the_precision(precision: str) -> None:
    options = provider_options("TensorrtExecutionProvider", ProviderSettings(precision=precision))
    assert options["trt_fp16_enable"] == str(precision in TENSORRT_FP16)
    assert options["trt_int8_enable"] == str(precision in TENSORRT_INT8)
