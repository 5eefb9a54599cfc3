"""The operator's side of telemetry: fleet keys, a live view, and the retraining collector.

``watch`` and ``collect`` read the same topics; every message is validated against the wire
schema in ``edgekit.runtime.telemetry.schema`` (under its versioning rule), and anything
else is counted and skipped.
"""

from edgekit.fleet.collector import SAMPLE_ARRAYS, CollectConfig, Collector, collect
from edgekit.fleet.drift import drift_html, drift_report
from edgekit.fleet.inbox import Inbox, Limits, subscriptions
from edgekit.fleet.keys import init_fleet, load_collector_key
from edgekit.fleet.messages import SKIP_REASONS, Message, Skip, drift_level, parse, percentile_ms, summarize
from edgekit.fleet.view import FleetView, NodeState, watch

__all__ = [
    "SAMPLE_ARRAYS",
    "SKIP_REASONS",
    "CollectConfig",
    "Collector",
    "FleetView",
    "Inbox",
    "Limits",
    "Message",
    "NodeState",
    "Skip",
    "collect",
    "drift_html",
    "drift_level",
    "drift_report",
    "init_fleet",
    "load_collector_key",
    "parse",
    "percentile_ms",
    "subscriptions",
    "summarize",
    "watch",
]
