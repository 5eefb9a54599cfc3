from __future__ import annotations

import numpy as np
import pytest

from edgekit.convert.measure import compare_outputs


def test_top1_with_labels() -> None:
    float_out = np.eye(4)[[0, 1, 2, 3]]
    artifact_out = np.eye(4)[[0, 1, 0, 3]]
    result = compare_outputs(float_out, artifact_out, np.array([0, 1, 2, 2]))
    assert result.metric == "top1"
    assert result.float_model == 75.0 and result.artifact == 50.0 and result.drop == 25.0
    assert result.similarity.agreement == 75.0


def test_agreement_without_labels() -> None:
    rng = np.random.default_rng(0)
    f = rng.normal(size=(50, 10))
    result = compare_outputs(f, f + 1e-6, None)
    assert result.metric == "agreement" and result.artifact == 100.0 and result.drop == 0.0
    assert result.similarity.cosine == pytest.approx(1.0) and result.similarity.max_abs_error == pytest.approx(1e-6)


def test_cosine_survives_tiny_and_zero_outputs() -> None:
    tiny = np.random.default_rng(1).random((5, 10)) * 1e-11  # a degenerate network's logits
    assert compare_outputs(tiny, tiny * 1.01, None).similarity.cosine == pytest.approx(1.0)
    assert compare_outputs(tiny, np.zeros_like(tiny), None).similarity.cosine == 0.0
    assert compare_outputs(np.zeros((2, 3)), np.zeros((2, 3)), None).similarity.cosine == 1.0
