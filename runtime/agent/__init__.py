"""The device side of over-the-air rollouts: ``edgekit agent`` (see docs/rollout.md)."""

from edgekit.runtime.agent.agent import Agent, AgentConfig
from edgekit.runtime.agent.document import AgentStatus, Deployment

__all__ = ["Agent", "AgentConfig", "AgentStatus", "Deployment"]
