"""The gateway's configuration: a YAML file (``--config`` or ``GATEWAY_CONFIG``), overridden field by
field by ``GATEWAY_*`` environment variables (nested fields with ``__``: ``GATEWAY_LOCAL__AGENTS``).

With no file at all the gateway serves the demo components in-process: the embedded default.
A bad value fails at start with one line per bad field, each naming the field and where the value
came from: the environment variable that set it, else the file (``ConfigError``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

DEFAULT_PORT = 7777
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
CONFIG_ENV = "GATEWAY_CONFIG"
ENV_PREFIX = "GATEWAY_"
ENV_NESTED_DELIMITER = "__"

IMPORT_PATH_PATTERN = r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"


class ConfigError(ValueError):
    """The configuration cannot be used; the message names every bad field, one per line."""


class LocalEntities(BaseModel):
    """In-process components, each a ``module:attribute`` import path to an agno instance."""

    model_config = ConfigDict(extra="forbid")

    agents: List[str] = Field(default_factory=list)
    teams: List[str] = Field(default_factory=list)
    workflows: List[str] = Field(default_factory=list)


DEMO_LOCAL = LocalEntities(
    agents=["gateway.demo.components:echo_agent"],
    teams=["gateway.demo.components:echo_team"],
    workflows=["gateway.demo.components:echo_workflow"],
)


class Settings(BaseSettings):
    """Every setting of the gateway, with its default."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_NESTED_DELIMITER, extra="forbid"
    )

    host: str = "127.0.0.1"
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    gateway_id: str = Field("agentos-gateway", min_length=1, description="os_id in GET /config")
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, gt=0, description="larger request bodies get 413")
    local: LocalEntities = Field(default_factory=LocalEntities)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: Type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> Tuple[PydanticBaseSettingsSource, ...]:
        # The environment wins over the file (passed in as init values): 12-factor overrides.
        return env_settings, init_settings, file_secret_settings


def load_settings(path: Optional[os.PathLike[str] | str] = None) -> Settings:
    """Settings from ``path`` (or ``$GATEWAY_CONFIG``) and the environment.

    Without any file, the demo components are served locally (the embedded default).
    """
    path = path or os.environ.get(CONFIG_ENV) or None
    values: Dict[str, Any] = _read_yaml(Path(path)) if path else {"local": DEMO_LOCAL.model_dump()}
    otherwise = str(path) if path else "environment"
    try:
        return Settings(**values)
    except ValidationError as error:
        raise ConfigError(_describe(error, otherwise=otherwise)) from None
    except SettingsError as error:  # an env value that is not JSON where JSON is needed
        raise ConfigError(_describe_unparsable(error)) from None


def _read_yaml(path: Path) -> Dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the config file: {error.strerror or error}") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the config must be a mapping of settings, not {type(values).__name__}")
    return values


def _describe(error: ValidationError, *, otherwise: str) -> str:
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(root)"
        lines.append(f"{_env_source(item['loc']) or otherwise}: {field}: {item['msg']}")
    return "\n".join(lines)


def _env_source(loc: Sequence[Union[str, int]]) -> Optional[str]:
    """The ``GATEWAY_*`` variable, spelled as set, that supplied the value at ``loc``: the most
    specific one (``GATEWAY_LOCAL__AGENTS`` before ``GATEWAY_LOCAL``). The environment wins over
    the file, so a variable that is set is where the value came from. Names match regardless of
    case, as pydantic-settings reads them."""
    names: List[str] = []
    for part in loc:
        if not isinstance(part, str):  # a list index: no variable goes deeper than the list
            break
        names.append(part)
    set_names = {name.upper(): name for name in os.environ}
    for depth in range(len(names), 0, -1):
        candidate = (ENV_PREFIX + ENV_NESTED_DELIMITER.join(names[:depth])).upper()
        if candidate in set_names:
            return set_names[candidate]
    return None


def _describe_unparsable(error: SettingsError) -> str:
    """One line for an env value pydantic-settings could not parse (``GATEWAY_LOCAL__AGENTS=x``):
    it names only the field, so every variable set for that field is named."""
    match = re.search(r'field "([^"]+)"', str(error))
    field = match.group(1) if match else "(unknown)"
    prefix = (ENV_PREFIX + field).upper()
    sources = sorted(
        name
        for name in os.environ
        if name.upper() == prefix or name.upper().startswith(prefix + ENV_NESTED_DELIMITER)
    )
    reason = f"not valid JSON ({error.__cause__})" if error.__cause__ else str(error)
    return f"{', '.join(sources) or 'environment'}: {field}: {reason}"
