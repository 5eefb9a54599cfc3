"""``updated``: a record copied with changes is validated as a new one would be, so a copy
can never carry (and a signature never cover) a value its type refuses."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from edgekit.core.deployment import AgentStatus
from edgekit.core.manifest import QuantizationScheme
from edgekit.core.validation import updated

ROOT = Path(__file__).resolve().parent.parent


def test_a_copy_with_changes_is_validated() -> None:
    scheme = QuantizationScheme(scheme="onnx-qdq", float_nodes=("a",))
    assert updated(scheme, float_nodes=("a", "b")).float_nodes == ("a", "b")
    assert scheme.float_nodes == ("a",)  # the original is untouched
    status = AgentStatus(node="a" * 32, epoch=1, phase="idle", time=1.0)
    with pytest.raises(ValidationError):
        updated(status, phase="bogus")
    with pytest.raises(TypeError, match="no field colour"):
        updated(status, colour="red")


def test_no_unvalidated_copies_are_left() -> None:
    found = subprocess.run(
        ["git", "grep", "-n", "model_copy(", "--", "*.py", ":!sdk/core/validation.py", ":!tests/test_validation.py"],
        cwd=ROOT, capture_output=True, text=True,
    ).stdout
    assert found == ""
