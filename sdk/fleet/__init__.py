"""The operator's side of telemetry: fleet keys, a live view, the collector into the fleet
database, its exports, and rollouts.

``watch`` and ``collect`` read the same topics; every message is validated against the wire
schema in ``edgekit.core.telemetry`` (under its versioning rule), and anything
else is counted and skipped.
"""

from edgekit.fleet.collector import CollectConfig, Collector, collect
from edgekit.fleet.database import SCHEMA_VERSION, open_engine
from edgekit.fleet.drift import drift_html, drift_report
from edgekit.fleet.export import SAMPLE_ARRAYS, export, sample_arrays
from edgekit.fleet.inbox import Inbox, Limits, subscriptions
from edgekit.fleet.keys import init_fleet, load_collector_key
from edgekit.fleet.messages import SKIP_REASONS, Message, Skip, drift_level, parse, percentile_ms, summarize
from edgekit.fleet.view import FleetView, NodeState, watch

__all__ = [
    "SAMPLE_ARRAYS",
    "SCHEMA_VERSION",
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
    "export",
    "init_fleet",
    "load_collector_key",
    "open_engine",
    "parse",
    "percentile_ms",
    "sample_arrays",
    "subscriptions",
    "summarize",
    "watch",
]
