"""The device side of over-the-air rollouts: ``edgekit agent`` (see docs/rollout.md)."""

from edgekit.core.deployment import AgentStatus, Deployment
from edgekit.runtime.agent.agent import Agent, AgentConfig

__all__ = ["Agent", "AgentConfig", "AgentStatus", "Deployment"]
