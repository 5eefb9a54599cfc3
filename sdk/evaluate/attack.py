"""FGSM and PGD examples crafted on the float Keras model, to replay on the artifacts.

Crafted with TensorFlow's own gradients (``tf.GradientTape``) on the Keras 3 model. The
Adversarial Robustness Toolbox is not used: see docs/evaluate.md. The examples transfer from
float to each artifact. Attacks crafted on a quantized graph see its rounded, near-zero
gradients and overstate its robustness (gradient masking), so transfer is the honest measure.
ε is a fraction of the evaluation data's range, and examples are clipped to that range.
"""

from __future__ import annotations

from typing import Any

import numpy as np

EPSILONS = (0.02, 0.05, 0.1)
PGD_STEPS = 10


def _loss_gradient(model: Any, x: np.ndarray, labels: np.ndarray, output: int, logits: bool) -> np.ndarray:
    import tensorflow as tf

    tensor = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(tensor)
        scores = model(tensor, training=False)
        if isinstance(scores, (list, tuple)):
            scores = scores[output]
        elif isinstance(scores, dict):
            scores = list(scores.values())[output]
        loss = tf.keras.losses.sparse_categorical_crossentropy(labels, scores, from_logits=logits)
    return np.asarray(tape.gradient(loss, tensor))


def fgsm(model: Any, x: np.ndarray, labels: np.ndarray, epsilon: float, bounds: tuple[float, float],
         output: int = 0, logits: bool = False) -> np.ndarray:  # fmt: skip
    """One signed-gradient step of ``epsilon`` × the data range."""
    low, high = bounds
    step = epsilon * (high - low)
    grad = _loss_gradient(model, x, labels, output, logits)
    return np.clip(x + step * np.sign(grad), low, high).astype(x.dtype)


def pgd(model: Any, x: np.ndarray, labels: np.ndarray, epsilon: float, bounds: tuple[float, float],
        output: int = 0, logits: bool = False, steps: int = PGD_STEPS) -> np.ndarray:  # fmt: skip
    """Madry et al.'s projected gradient descent: a random start in the ε-ball, then
    ``steps`` signed steps of ε/4, each projected back into the ball and the data range."""
    low, high = bounds
    radius = epsilon * (high - low)
    rng = np.random.default_rng(0)
    adversarial = np.clip(x + rng.uniform(-radius, radius, x.shape), low, high).astype(x.dtype)
    for _ in range(steps):
        grad = _loss_gradient(model, adversarial, labels, output, logits)
        adversarial = adversarial + radius / 4 * np.sign(grad)
        adversarial = np.clip(np.clip(adversarial, x - radius, x + radius), low, high).astype(x.dtype)
    return adversarial
