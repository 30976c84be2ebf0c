"""agentos-gateway: run agno agents, teams and workflows in-process or on a pool of AgentOS servers.

``AgentOSRunner`` is the library face; ``create_app`` builds the gateway service.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("agentos-gateway")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"

from gateway.runner import AgentOSRunner  # noqa: E402


def create_app(*args, **kwargs):  # type: ignore[no-untyped-def]
    """The FastAPI app; imported lazily so library users do not load FastAPI and AgentOS schemas."""
    from gateway.api.app import create_app as _create_app

    return _create_app(*args, **kwargs)


__all__ = ["AgentOSRunner", "__version__", "create_app"]
