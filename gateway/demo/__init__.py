"""The offline demo: a deterministic model and the agents, team and workflow built on it."""

from gateway.demo.components import AGENT_ID, TEAM_ID, WORKFLOW_ID, DemoComponents, build_demo, open_db
from gateway.demo.model import DeterministicFailure, DeterministicModel

__all__ = [
    "AGENT_ID",
    "TEAM_ID",
    "WORKFLOW_ID",
    "DemoComponents",
    "DeterministicFailure",
    "DeterministicModel",
    "build_demo",
    "open_db",
]
