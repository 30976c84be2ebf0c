"""The HTTP face of the gateway."""

from gateway.api.app import create_app

__all__ = ["create_app"]
