"""One evaluation: load the data, the float source and every artifact, craft the attacks on
float, run everything on everything, and write the report."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekit.bundle import read_manifest
from edgekit.evaluate import attack
from edgekit.evaluate.explain import Explainer
from edgekit.evaluate.run import (
    EvaluateOptions,
    Evaluation,
    Predict,
    Tick,
    check_labels,
    compare,
    corrupted_copies,
    model_evaluation,
    single_input,
)
from edgekit.evaluate.scores import probabilities

CHUNK = 256


def stages(options: EvaluateOptions, artifacts: int, kind_corruptions: int = 5) -> int:
    """How many ticks ``evaluate`` makes: a progress bar's total."""
    models = 1 + artifacts
    return models * (kind_corruptions + 1) + 3


def evaluate(options: EvaluateOptions, tick: Tick = lambda _: None) -> Evaluation:
    from edgekit.converters.source import load_source
    from edgekit.data import check_dataset, load_dataset
    from edgekit.runtime import Model

    manifest = read_manifest(options.bundle)
    data = load_dataset(options.evaluation, "evaluation")
    with load_source(options.source) as source:
        name = single_input([spec.name for spec in source.inputs])
        checked, _ = check_dataset(data, source.inputs, "evaluation", force=True)
        x = checked.samples.arrays[name][: options.samples]
        output = _output_index([o.name for o in source.outputs], manifest.primary_output)
        float_predict = _chunked(lambda batch: source.predict({name: batch})[output])
        float_scores = float_predict(x[:1])
        classes = int(float_scores.reshape(1, -1).shape[1])
        y = check_labels(checked.y, classes, options.evaluation)[: len(x)]
        kind, corrupted = corrupted_copies(x, options.severities)
        tick("corruptions made")
        adversarial, how = _attacks(source.keras_model, x, y, output, float_predict, options)
        tick("attacks crafted on float")
        float_eval, float_scores = model_evaluation(
            "float", float_predict, x, y, classes, corrupted, adversarial, tick
        )
        explainer = Explainer(kind, x, y, float_scores, _names(manifest.labels, classes))
        explainer.explain_float(float_predict, source.keras_model, output)
        tick("float explained")
        compared = []
        for entry in manifest.artifacts:
            with Model.load(
                options.bundle, format=entry.format, allow_unsigned=options.allow_unsigned
            ) as model:
                names = [o.name for o in model.info.outputs]
                index = _output_index(names, manifest.primary_output)
                predict = _chunked(lambda batch, m=model, i=index: m.run(batch)[i])
                label = f"{entry.format} {entry.precision}"
                evaluation, scores = model_evaluation(
                    label, predict, x, y, classes, corrupted, adversarial, tick
                )
                found = compare(float_eval, float_scores, evaluation, scores)
                compared.append(found.model_copy(update={"attribution": explainer.explain(label, predict)}))
    result = Evaluation(
        model=manifest.name, version=manifest.version, samples=len(x), kind=kind,
        labels=list(manifest.labels) if manifest.labels else None, severities=list(options.severities),
        epsilons=list(options.epsilons) if adversarial else [], attack=how, float_model=float_eval,
        artifacts=compared, explained=explainer.indices.tolist(), explanation=explainer.how,
    )  # fmt: skip
    if options.report is not None:
        from edgekit.evaluate.page import write_report

        write_report(options.report, result, x, explainer.maps)
    return result


def _attacks(
    keras_model: Any, x: np.ndarray, y: np.ndarray, output: int, predict: Predict, options: EvaluateOptions
) -> tuple[dict[str, list[np.ndarray]] | None, str]:
    if keras_model is None:
        return None, "none: the source is not a Keras model, so there are no gradients to craft attacks with"
    if not np.issubdtype(x.dtype, np.floating):
        return None, f"none: the input is {x.dtype}, and gradients need a float input"
    logits = not np.allclose(probabilities(predict(x[:8])), predict(x[:8]), atol=1e-4)
    classes = int(predict(x[:1]).reshape(1, -1).shape[1])
    crafted = attack.craft(keras_model, x, y, options.epsilons, classes, output, logits)
    how = (
        f"FGSM and PGD ({attack.PGD_STEPS} steps) from the Adversarial Robustness Toolbox on the float model"
    )
    return crafted, how + ", replayed on each artifact"


def _chunked(predict: Predict) -> Predict:
    def run(x: np.ndarray) -> np.ndarray:
        return np.concatenate([np.asarray(predict(x[i : i + CHUNK])) for i in range(0, len(x), CHUNK)])

    return run


def _names(labels: Any, classes: int) -> list[str]:
    return list(labels) if labels and len(labels) == classes else [str(i) for i in range(classes)]


def _output_index(names: list[str], primary: str | None) -> int:
    return names.index(primary) if primary in names else 0
