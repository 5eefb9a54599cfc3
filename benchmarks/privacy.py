"""What edgekit's privacy measures deliver, measured: de-identification recall and precision
per type on the labelled PII corpus, the ε the report pipeline shows against the ε it
claims, and what each costs on the device.

    python benchmarks/privacy.py                          # about 1 minute on 2 cores
    python benchmarks/privacy.py --tagger pii-tagger      # with an installed name tagger
    python benchmarks/privacy.py --per-type 1000 --runs 20000

docs/privacy.md shows its tables.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from edgekit.runtime.telemetry import dp  # noqa: E402
from edgekit.runtime.telemetry.deid import Deidentifier, NameTagger  # noqa: E402
from edgekit.runtime.telemetry.privacy import Noise  # noqa: E402
from edgekit.testing.dp_audit import measured_epsilon, sample  # noqa: E402
from edgekit.testing.pii import corpus, score, table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-type", type=int, default=500, help="commands per PII type (default 500)")
    parser.add_argument("--seed", type=int, default=3, help="corpus seed (default 3: not a test's)")
    parser.add_argument("--tagger", help="an installed name tagger (deid_model) to measure as well")
    parser.add_argument("--runs", type=int, default=10000, help="releases per input in the DP audit")
    args = parser.parse_args()
    deidentification(args.per_type, args.seed, args.tagger)
    audit(args.runs)
    broken(args.runs)


def deidentification(per_type: int, seed: int, tagger_name: str | None) -> None:
    examples = corpus(per_type=per_type, seed=seed)
    runs = [("patterns", Deidentifier())]
    tagger = NameTagger.load(tagger_name) if tagger_name else None
    if tagger is not None:
        runs.append((f"patterns + {tagger_name}", Deidentifier(tagger=tagger)))
    for name, mask in runs:
        started = time.perf_counter()
        scores = score(examples, mask.spans)
        per_text = (time.perf_counter() - started) / (2 * len(examples))  # score calls spans twice
        print(f"\n## de-identification: {name}, {len(examples)} commands, seed {seed}, 7 locales")
        print(f"{per_text * 1e6:.0f} µs per command\n")
        print(table(scores))
    if tagger is not None:
        tagger.close()


def audit(runs: int) -> None:
    from test_dp_audit import RICH_X, RICH_Y, SMALL_X, SMALL_Y, WINDOW_X, WINDOW_Y, flat

    print(f"\n## differential privacy: measured ε (99.9% lower bound), {runs} releases per input\n")
    print(
        "| report layout | unit | sensitivity | ε configured | ε measured | release µs (DP) "
        "| release µs (no DP) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    cases = (
        ("latency only", SMALL_X, SMALL_Y, None), ("every histogram", RICH_X, RICH_Y, None),
        ("latency only", WINDOW_X, WINDOW_Y, 4),
    )  # fmt: skip
    for layout, x, y, most in cases:
        for epsilon in (0.5, 1.0, 2.0):
            noise = dp.mechanism(x, epsilon, most)

            def release(counts: dict[str, np.ndarray]) -> np.ndarray:
                return flat(dp.release(counts, noise, most, 5).counts)  # noqa: B023

            started = time.perf_counter()
            out_x, out_y = sample(lambda: release(x), runs), sample(lambda: release(y), runs)  # noqa: B023
            noised = (time.perf_counter() - started) / (2 * runs)
            started = time.perf_counter()
            for _ in range(1000):
                dp.release(x, None, None, 5)
            plain = (time.perf_counter() - started) / 1000
            found = measured_epsilon(out_x, out_y, flat(dp.clip(x, most)), flat(dp.clip(y, most)), 1e-3)
            unit = "one inference" if most is None else f"a window (clip {most})"
            print(
                f"| {layout} | {unit} | {noise.sensitivity} | {epsilon:g} | {found.epsilon:.2f} | "
                f"{noised * 1e6:.0f} | {plain * 1e6:.0f} |"
            )


def broken(runs: int) -> None:
    """The three mechanisms the test must catch, on the smallest layout at ε = 1."""
    from test_dp_audit import SMALL_X, SMALL_Y, DrawnOnce, flat, real, suppressed_first

    print(f"\n## broken on purpose, ε = 1, {runs} releases per input\n")
    print("| mechanism | ε measured |\n|---|---:|")
    sensitivity = dp.sensitivity(SMALL_X, None)
    cases = (
        ("the real one", dp.mechanism(SMALL_X, 1.0, None), real),
        ("sensitivity halved", Noise(2.0, sensitivity), real),
        ("noise drawn once per process", DrawnOnce(1.0, sensitivity), real),
        ("noise after k-suppression", dp.mechanism(SMALL_X, 1.0, None), suppressed_first),
    )
    for name, noise, release in cases:
        out_x = sample(lambda: release(SMALL_X, noise, None), runs)  # noqa: B023
        out_y = sample(lambda: release(SMALL_Y, noise, None), runs)  # noqa: B023
        found = measured_epsilon(out_x, out_y, flat(SMALL_X), flat(SMALL_Y), 1e-3)
        print(f"| {name} | {found.epsilon:.2f} |")


if __name__ == "__main__":
    main()
