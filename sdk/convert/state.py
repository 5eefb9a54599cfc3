"""A streaming model's state pairs: which output is fed back to which input at the next step.

Given with ``--state OUTPUT:INPUT``, or found from names the common exports use: Silero VAD's
``state`` and ``stateN``, and the ``_out``, ``new_`` and ``next_`` forms.
"""

from __future__ import annotations

from edgekit.converters.source import SourceModel, TensorSpec
from edgekit.core.errors import InputError
from edgekit.core.manifest import StatePair
from edgekit.views.progress import Reporter

_FORMS = ("{}N", "{}n", "{}_out", "{}out", "{}_next", "new_{}", "next_{}", "out_{}")


def state_pairs(
    source: SourceModel, given: tuple[tuple[str, str], ...], reporter: Reporter
) -> tuple[StatePair, ...]:
    inputs = {spec.name: spec for spec in source.inputs}
    outputs = {spec.name: spec for spec in source.outputs}
    if given:
        return tuple(_checked(output, name, outputs, inputs) for output, name in given)
    found = named_pairs(source)
    if found:
        pairs = ", ".join(f"{p.output} → {p.input}" for p in found)
        reporter.note(f"state pairs found from their names: {pairs} (set them with --state OUTPUT:INPUT)")
    return found


def named_pairs(source: SourceModel) -> tuple[StatePair, ...]:
    """The state pairs that the output and input names and shapes show."""
    outputs = {spec.name: spec for spec in source.outputs}
    return tuple(
        StatePair(output=output, input=spec.name)
        for spec in source.inputs
        for output in (form.format(spec.name) for form in _FORMS)
        if output in outputs and _matches(outputs[output], spec)
    )


def _checked(
    output: str, name: str, outputs: dict[str, TensorSpec], inputs: dict[str, TensorSpec]
) -> StatePair:
    where = f"--state {output}:{name}"
    if output not in outputs:
        raise InputError(f"{where}: the model has no output '{output}' (outputs: {', '.join(outputs)})")
    if name not in inputs:
        raise InputError(f"{where}: the model has no input '{name}' (inputs: {', '.join(inputs)})")
    if not _matches(outputs[output], inputs[name]):
        raise InputError(
            f"{where}: the output is {outputs[output].describe()} and the input {inputs[name].describe()}; "
            "a state must come back as it goes in"
        )
    return StatePair(output=output, input=name)


def _matches(output: TensorSpec, input_spec: TensorSpec) -> bool:
    same_dims = len(output.shape) == len(input_spec.shape) and all(
        a is None or b is None or a == b for a, b in zip(output.shape, input_spec.shape, strict=True)
    )
    return same_dims and output.dtype == input_spec.dtype
