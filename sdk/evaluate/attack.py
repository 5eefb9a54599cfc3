"""FGSM and PGD examples crafted on the float Keras model, to replay on the artifacts.

The attacks are the Adversarial Robustness Toolbox's (``FastGradientMethod`` and
``ProjectedGradientDescent``) on its ``TensorFlowV2Classifier``, which works with Keras 3
here (ART 1.20.1, Keras 3.15, TensorFlow 2.21). The examples transfer from float to each
artifact. Attacks crafted on a quantized graph see its rounded, near-zero gradients and
overstate its robustness (gradient masking), so transfer is the honest measure. ε is a
fraction of the evaluation data's range, and examples are clipped to that range.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from edgekit.core.errors import MissingDependencyError

EPSILONS = (0.02, 0.05, 0.1)
PGD_STEPS = 10
BATCH = 256


def craft(
    model: Any, x: np.ndarray, labels: np.ndarray, epsilons: tuple[float, ...], classes: int,
    output: int = 0, logits: bool = False,
) -> dict[str, list[np.ndarray]]:
    """FGSM and PGD examples for each ε: Madry et al.'s PGD, one random start in the ε-ball
    and ``PGD_STEPS`` steps of ε/4."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ART says, on import, which of PyTorch's tools it lacks
            from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent
            from art.estimators.classification import TensorFlowV2Classifier
    except ImportError:
        raise MissingDependencyError(
            "adversarial-robustness-toolbox", "evaluate", "edgekit evaluate"
        ) from None
    import keras

    if len(model.outputs) > 1:
        model = keras.Model(model.inputs, model.outputs[output])
    low, high = float(x.min()), float(x.max())
    classifier = TensorFlowV2Classifier(
        model=model, nb_classes=classes, input_shape=x.shape[1:], clip_values=(low, high),
        loss_object=keras.losses.SparseCategoricalCrossentropy(from_logits=logits),
    )
    crafted: dict[str, list[np.ndarray]] = {"fgsm": [], "pgd": []}
    for epsilon in epsilons:
        radius = epsilon * (high - low)
        fgsm = FastGradientMethod(classifier, eps=radius, batch_size=BATCH)
        pgd = ProjectedGradientDescent(classifier, eps=radius, eps_step=radius / 4, max_iter=PGD_STEPS,
                                       num_random_init=1, batch_size=BATCH, verbose=False)
        crafted["fgsm"].append(fgsm.generate(x=x, y=labels).astype(x.dtype))
        crafted["pgd"].append(pgd.generate(x=x, y=labels).astype(x.dtype))
    return crafted
