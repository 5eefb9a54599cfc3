"""One evaluation: load the data, the float source and every artifact, craft the attacks on
float, run everything on everything, and write the report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.core.bundle import read_manifest
from edgekit.core.manifest import Manifest
from edgekit.core.validation import updated
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

if TYPE_CHECKING:
    from edgekit.runtime import Model

CHUNK = 256


def stages(options: EvaluateOptions, artifacts: int, kind_corruptions: int = 5) -> int:
    """How many ticks ``evaluate`` makes: a progress bar's total."""
    models = 1 + artifacts
    return models * (kind_corruptions + 1) + 3


@dataclass
class Case:
    """What every model is run on: the inputs (an array, or a text model's feed), the labels,
    the corrupted copies, and the attacks."""

    x: Any
    y: np.ndarray
    kind: str
    corrupted: dict[str, list[Any]]
    adversarial: dict[str, list[np.ndarray]] | None
    how: str
    texts: list[str] | None = None
    encoder: Any = None


def evaluate(options: EvaluateOptions, tick: Tick = lambda _: None) -> Evaluation:
    from edgekit.converters.source import load_source
    from edgekit.runtime import Model

    manifest = read_manifest(options.bundle)
    with load_source(options.source) as source:
        output = _output_index([o.name for o in source.outputs], manifest.primary_output)
        case, float_predict = _case(options, manifest, source, output, tick)
        classes = int(float_predict(_rows(case.x, 0, 1)).reshape(1, -1).shape[1])
        float_eval, float_scores = model_evaluation(
            "float", float_predict, case.x, case.y, classes, case.corrupted, case.adversarial, tick
        )
        names = _names(manifest.labels, classes)
        explainer = Explainer(case.kind, case.x, case.y, float_scores, names, case.encoder)
        explainer.explain_float(float_predict, source.keras_model, output)
        tick("float explained")
        compared = []
        for entry in manifest.artifacts:
            with Model.load(
                options.bundle, format=entry.format, allow_unsigned=options.allow_unsigned
            ) as model:
                index = _output_index([o.name for o in model.info.outputs], manifest.primary_output)
                predict = _chunked(_output(model, index))
                label = f"{entry.format} {entry.precision}"
                evaluation, scores = model_evaluation(
                    label, predict, case.x, case.y, classes, case.corrupted, case.adversarial, tick
                )
                found = compare(float_eval, float_scores, evaluation, scores)
                compared.append(updated(found, attribution=explainer.explain(label, predict)))
    result = Evaluation(
        model=manifest.name, version=manifest.version, samples=len(case.y), kind=case.kind,
        labels=list(manifest.labels) if manifest.labels else None, severities=list(options.severities),
        epsilons=list(options.epsilons) if case.adversarial else [], attack=case.how, float_model=float_eval,
        artifacts=compared, explained=explainer.indices.tolist(), explanation=explainer.how,
    )
    if options.report is not None:
        from edgekit.evaluate.page import write_report

        write_report(options.report, result, case.x, explainer.maps, case.texts, explainer.tokens)
    return result


def _case(
    options: EvaluateOptions, manifest: Manifest, source: Any, output: int, tick: Tick
) -> tuple[Case, Predict]:
    from edgekit.convert.data import check_dataset, load_dataset

    data = load_dataset(options.evaluation, "evaluation")
    if manifest.text is not None:
        return _text_case(options, manifest, data, source, output), _chunked(
            lambda feed: source.predict(feed)[output]
        )
    name = single_input([spec.name for spec in source.inputs])
    checked, _ = check_dataset(data, source.inputs, "evaluation", force=True)
    x = checked.samples.arrays[name][: options.samples]
    predict = _chunked(lambda batch: source.predict({name: batch})[output])
    classes = int(predict(x[:1]).reshape(1, -1).shape[1])
    y = check_labels(checked.y, classes, options.evaluation)[: len(x)]
    kind, corrupted = corrupted_copies(x, options.severities)
    tick("corruptions made")
    adversarial, how = _attacks(source.keras_model, x, y, output, predict, options)
    tick("attacks crafted on float")
    return Case(x, y, kind, corrupted, adversarial, how), predict


def _text_case(options: EvaluateOptions, manifest: Manifest, data: Any, source: Any, output: int) -> Case:
    from edgekit.evaluate.text import text_case
    from edgekit.runtime import Model

    with Model.load(options.bundle, allow_unsigned=options.allow_unsigned) as model:
        encoder = model.text_encoder
    found = text_case(data, encoder, manifest.labels, options.severities, options.samples)
    how = "none: a text model takes token ids, which have no gradients; the text corruptions stress it"
    return Case(found.feed, found.labels, "text", found.corrupted, None, how, found.texts, encoder)


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


def _rows(x: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of an array, or of every array of a feed."""
    if isinstance(x, dict):
        return {name: value[start:stop] for name, value in x.items()}
    return x[start:stop]


def _count(x: Any) -> int:
    return len(next(iter(x.values()))) if isinstance(x, dict) else len(x)


def _output(model: Model, index: int) -> Predict:
    """``model``'s output ``index`` for a batch."""
    return lambda batch: model.run(batch)[index]


def _chunked(predict: Predict) -> Predict:
    def run(x: Any) -> np.ndarray:
        parts = [np.asarray(predict(_rows(x, i, i + CHUNK))) for i in range(0, _count(x), CHUNK)]
        return np.concatenate(parts)

    return run


def _names(labels: Any, classes: int) -> list[str]:
    return list(labels) if labels and len(labels) == classes else [str(i) for i in range(classes)]


def _output_index(names: list[str], primary: str | None) -> int:
    return names.index(primary) if primary in names else 0
