"""``Model.follow``: an application keeps calling while the agent (here, ``install`` and
``models rollback``) changes the active version under it; every call answers, the new version
takes over within a few polls, and the old one is closed once its calls have finished."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from test_store import variant

from edgekit.core.errors import InputError
from edgekit.runtime import Model
from edgekit.runtime.store import Store


def _until(condition, seconds: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_a_followed_model_swaps_to_the_new_active_version_with_no_failed_call(
    converted, digits_eval, home: Path, publisher: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    x, _ = digits_eval
    v2 = variant(converted("int8").output, tmp_path / "v2.ekb", publisher, 2)
    v3 = variant(converted("fp32").output, tmp_path / "v3.ekb", publisher, 3)
    Store().install(v2)
    followed = Model.follow("digits", interval=0.05, threads=1)
    answers: list[int] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def application() -> None:
        while not stop.is_set():
            try:
                followed.predict(x[:4])
                answers.append(followed.manifest.version)
            except BaseException as exc:  # noqa: BLE001 - every failure is the test's finding
                failures.append(exc)

    caller = threading.Thread(target=application)
    caller.start()
    try:
        assert _until(lambda: len(answers) > 20)
        old = followed.model
        Store().install(v3)  # the agent's install: v3 is active now
        assert _until(lambda: followed.manifest.version == 3 and answers[-1] == 3)
        assert _until(lambda: old.backend is None)  # closed, once its calls had finished
        Store().rollback("digits")
        assert _until(lambda: followed.manifest.version == 2)
        with Model.load(v2) as direct:
            np.testing.assert_array_equal(followed.predict(x[:2]), direct.predict(x[:2]))
    finally:
        stop.set()
        caller.join()
        followed.close()
    assert failures == [] and followed.swaps == 2
    assert answers[0] == 2 and 3 in answers


def test_follow_takes_a_store_name_and_no_version(converted, home: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError, match="is a bundle file; install it, then follow it by name"):
        Model.follow(str(converted("fp32").output))
    with pytest.raises(InputError, match="runs the active version"):
        Model.follow("digits", version=2)
