"""The kernel: what the build side and the device side share, and all the device side may
import of ``edgekit`` outside ``edgekit.runtime``.

Errors, the one vocabulary of formats and precisions, samples, device profiles, the bundle
and its manifest, signing, atomic writes, paths, the bundled tokenizer, per-class and
per-span reports, and the wire contracts both ends speak: the telemetry schema and topics
(``telemetry``) and the signed deployment document with the agent's status (``deployment``).
Light imports only, and nothing of ``edgekit`` outside this package: tests/test_imports.py
holds that contract.
"""
