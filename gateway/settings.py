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
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Type, Union

import yaml
from pydantic import (
    AnyHttpUrl, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator,
)  # fmt: skip
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from gateway.errors import ConfigError

DEFAULT_PORT = 7777
DEFAULT_ADMIN_PORT = 9901  # Envoy's admin port
ADMIN_PORT_ENV = "GATEWAY_ADMIN__PORT"
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
CONFIG_ENV = "GATEWAY_CONFIG"
ENV_PREFIX = "GATEWAY_"
ENV_NESTED_DELIMITER = "__"

IMPORT_PATH_PATTERN = r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"
# The pool member that is the gateway's own in-process AgentOS (gateway/local_os.py).
IN_PROCESS_UPSTREAM = "local"
LOCAL_DB_ENV = "GATEWAY_LOCAL_DB"
LOCAL_DB_PATTERN = r"^(sqlite:///.+|(postgresql|postgresql\+psycopg|postgres)://.+)$"


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


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


UPSTREAM_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"


DNS_TARGET_PATTERN = r"^[A-Za-z0-9.-]{1,253}:[0-9]{1,5}$"


class UpstreamConfig(Strict):
    """One AgentOS server (``url``), or every address a DNS name resolves to (``dns``: each
    address an upstream named ``<name>-<address>-<port>``, looked up again every ``dns_refresh_s``:
    a Kubernetes headless service scales the pool). Its own key is injected on every request."""

    name: str = Field(pattern=UPSTREAM_NAME_PATTERN, description="shown in x-agentos-gateway-upstream")
    url: Optional[AnyHttpUrl] = Field(None, description="http(s)://host:port of the AgentOS")
    dns: Optional[str] = Field(None, pattern=DNS_TARGET_PATTERN, description="host:port to resolve instead of url")
    dns_refresh_s: float = Field(10.0, gt=0, description="how often a dns entry is resolved again")
    weight: float = Field(1.0, gt=0, le=1000, description="share of sessions, relative to the others")
    api_key: Optional[str] = Field(None, min_length=1, repr=False, description="the upstream's OS_SECURITY_KEY")

    @model_validator(mode="after")
    def _url_or_dns(self) -> "UpstreamConfig":
        if (self.url is None) == (self.dns is None):
            raise ValueError("give exactly one of url and dns")
        return self

    @property
    def base_url(self) -> str:
        return str(self.url).rstrip("/")

    def for_address(self, host: str, port: int) -> "UpstreamConfig":
        """The upstream a DNS answer's address stands for."""
        name = f"{self.name}-{host.replace(':', '.')}-{port}"
        url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        return UpstreamConfig(name=name[:63], url=url, weight=self.weight, api_key=self.api_key)


class HealthSettings(Strict):
    """Active health checks: ``GET /health`` on every upstream (Envoy's names)."""

    interval_s: float = Field(5.0, gt=0, description="between probes of one upstream")
    timeout_s: float = Field(2.0, gt=0, description="a probe slower than this failed")
    jitter_percent: float = Field(10.0, ge=0, le=100, description="each interval varies by up to this much")
    healthy_threshold: int = Field(2, ge=1, description="good probes in a row that mark an upstream up")
    unhealthy_threshold: int = Field(3, ge=1, description="failed probes in a row that mark it down")


class OutlierSettings(Strict):
    """Passive health: ejection on failures seen in real traffic (Envoy's outlier detection, with
    local-origin errors split from answers)."""

    consecutive_failures: int = Field(
        5, ge=1, description="in a row: connect errors, timeouts, resets, malformed answers, cut streams, 502/503/504"
    )
    base_ejection_s: float = Field(30.0, gt=0, description="first ejection; doubles each time")
    max_ejection_s: float = Field(300.0, gt=0, description="cap of one ejection")
    max_ejection_percent: float = Field(50.0, ge=0, le=100, description="never eject more of the pool")
    count_5xx: bool = Field(
        False, description="a plain 500 (AgentOS's answer to an exception, often the client's own input) counts too"
    )


class RetrySettings(Strict):
    """Retries of runs the upstream surely did not start, on the next upstream in affinity order."""

    max_attempts: int = Field(3, ge=1, description="tries per request, the first included")
    backoff_base_s: float = Field(0.025, ge=0, description="jittered exponential backoff: base")
    backoff_max_s: float = Field(0.25, ge=0, description="jittered exponential backoff: cap")
    budget_percent: float = Field(20.0, ge=0, le=100, description="retries at most this share of active requests")
    min_retry_concurrency: int = Field(3, ge=0, description="retries always allowed at once")
    on_503: bool = Field(
        False, description="also retry an upstream's 503 (AgentOS answers a run that failed mid-way with its error's status)"
    )


class TimeoutSettings(Strict):
    connect_s: float = Field(2.0, gt=0, description="TCP connect to an upstream")
    first_byte_s: float = Field(30.0, gt=0, description="request sent to response headers, for streams")
    run_s: float = Field(300.0, gt=0, description="a whole run, stream or not")
    stream_idle_s: float = Field(300.0, gt=0, description="silence of a stream before it is ended")
    keepalive_s: float = Field(15.0, ge=0, description="': keepalive' comment after this much silence; 0 = off")
    upstream_keepalive_s: float = Field(
        4.0, gt=0, description="an idle upstream connection is closed after this; below AgentOS's (uvicorn's) 5 s"
    )


class AffinitySettings(Strict):
    mode: Literal["hash", "bounded", "strict", "off"] = Field("hash", description="how sessions stick")
    load_factor: float = Field(1.25, ge=1.0, description="bounded mode: c of consistent hashing with bounded loads")
    headers: bool = Field(True, description="send x-agentos-gateway-upstream and -affinity")


KEY_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"


class ApiKey(Strict):
    """One client key of the gateway: ``Authorization: Bearer <key>``."""

    name: str = Field(pattern=KEY_NAME_PATTERN, description="who the key belongs to; logged instead of the key")
    key: str = Field(min_length=16, repr=False, description="the secret; better from a file or the environment")
    entities: Optional[List[str]] = Field(
        None, description="ids this key may run and read (shorthand for their agno scopes); none: see scopes"
    )
    scopes: Optional[List[str]] = Field(
        None, description="AgentOS RBAC scopes (agents:<id>:run, sessions:read, ...); no scopes nor entities: agent_os:admin"
    )
    rate_per_s: Optional[float] = Field(None, gt=0, description="sustained requests per second; none: no limit")
    burst: Optional[int] = Field(None, ge=1, description="requests allowed at once above the rate (default: rate)")

    @field_validator("scopes")
    @classmethod
    def _known_scopes(cls, scopes: Optional[List[str]]) -> Optional[List[str]]:
        if scopes:
            from gateway.scopes import scope_problem  # agno's parser: imported only when keys have scopes

            problems = [problem for problem in map(scope_problem, scopes) if problem]
            if problems:
                raise ValueError("; ".join(problems))
        return scopes

    @field_validator("entities")
    @classmethod
    def _entity_ids(cls, entities: Optional[List[str]]) -> Optional[List[str]]:
        if entities:
            from gateway.wire.kinds import ENTITY_ID_PATTERN, is_valid_entity_id

            bad = [entity for entity in entities if not is_valid_entity_id(entity)]
            if bad:
                raise ValueError(f"{', '.join(map(repr, bad))}: an id must match {ENTITY_ID_PATTERN.pattern}")
        return entities


class AuthSettings(Strict):
    """Client keys. With none configured, the gateway's API is open (like AgentOS without a key)."""

    keys: List[ApiKey] = Field(default_factory=list)
    keys_file: Optional[Path] = Field(None, description="a YAML/JSON list of keys in the same shape as keys")

    @model_validator(mode="after")
    def _load_keys_file(self) -> "AuthSettings":
        if self.keys_file is not None:
            try:
                entries = yaml.safe_load(self.keys_file.read_text(encoding="utf-8")) or []
            except (OSError, yaml.YAMLError) as error:
                raise ValueError(f"cannot read keys_file {self.keys_file}: {error}") from None
            if not isinstance(entries, list):
                raise ValueError(f"keys_file {self.keys_file}: a list of keys is expected")
            try:
                self.keys = [*self.keys, *(ApiKey.model_validate(entry) for entry in entries)]
            except ValidationError as error:
                problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
                raise ValueError(f"keys_file {self.keys_file}: {problems}") from None
            self.keys_file = None  # loaded: re-validating must not read it twice
        names = [key.name for key in self.keys]
        if len(set(names)) != len(names):
            raise ValueError("key names must be unique")
        if len({key.key for key in self.keys}) != len(self.keys):
            raise ValueError("two keys have the same secret")
        return self


class LimitSettings(Strict):
    max_header_bytes: int = Field(16384, ge=1024, description="larger request headers get 431")
    max_concurrent_runs: int = Field(1000, ge=1, description="runs at once, stream or not; beyond: 503")
    max_streams: int = Field(1000, ge=1, description="streamed runs at once; beyond: 503")
    client_header_timeout_s: float = Field(
        30.0, gt=0, description="a request head not whole this long after its first byte (or the connection) gets 408"
    )
    client_body_timeout_s: float = Field(
        30.0, gt=0, description="a request body with nothing new for this long between two reads gets 408"
    )


class StorageSettings(Strict):
    """Which upstreams share a database (``gateway/balancing/storage.py``), and the bounds of a
    list merged over several databases."""

    mode: Literal["auto", "shared", "per_upstream"] = Field(
        "auto", description="auto: grouped by the database ids each upstream's /config reports; or say it"
    )
    merge_max_items: int = Field(
        10000, ge=1, description="a merged list reads page x limit items per database group; more is refused (400)"
    )
    merge_max_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, description="one database group's answer to a merged list; larger is a 502"
    )


class DoorSettings(Strict):
    """AgentOS's other doors (AG-UI, A2A, MCP, the workflow WebSocket): ``gateway/doors/``."""

    public_url: Optional[str] = Field(
        None,
        pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$",
        description="the gateway's URL as clients reach it, written into A2A agent cards (default: the request's own)",
    )
    mcp_session_ttl_s: float = Field(
        3600.0, gt=0, description="an MCP session unused this long is forgotten (its next request is read back)"
    )
    mcp_max_sessions: int = Field(100_000, ge=1, description="MCP sessions remembered; the oldest go first")
    websocket_max_message_bytes: int = Field(
        1024 * 1024, ge=1024, description="a larger WebSocket message closes the connection with 1009"
    )
    websocket_first_message_s: float = Field(
        10.0, gt=0, description="a WebSocket's first message (and its key, when one is needed) within this, else 1008"
    )


class ShutdownSettings(Strict):
    drain_delay_s: float = Field(
        2.0, ge=0, description="after SIGTERM, /ready answers 503 this long before the listener closes"
    )
    grace_s: float = Field(30.0, ge=0, description="then in-flight work has this long to finish")


class AdminSettings(Strict):
    """The admin listener (Envoy's): the Prometheus scrape and the ``/admin`` API on a port of
    their own, bound to the public listener's ``host``, never on the port that faces clients."""

    port: int = Field(
        DEFAULT_ADMIN_PORT, ge=0, le=65535, description="port of GET /metrics (Prometheus) and /admin; 0: any free one"
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
    upstreams: List[UpstreamConfig] = Field(default_factory=list)
    on_conflict: Literal["error", "local", "upstream"] = Field(
        "error", description="an id served locally and by upstreams: refuse to start, or which one wins"
    )
    panic_threshold_percent: float = Field(
        50.0, ge=0, le=100,
        description="under this share of usable upstreams for an id, spread over all of them (Envoy's panic); 0 = off",
    )  # fmt: skip
    health: HealthSettings = Field(default_factory=HealthSettings)
    outlier: OutlierSettings = Field(default_factory=OutlierSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    timeouts: TimeoutSettings = Field(default_factory=TimeoutSettings)
    affinity: AffinitySettings = Field(default_factory=AffinitySettings)
    max_connections_per_upstream: int = Field(1000, ge=1, description="aiohttp keep-alive pool size")
    auth: AuthSettings = Field(default_factory=AuthSettings)
    forward_authorization: bool = Field(
        False, description="send the client's Authorization to upstreams (agno JWT auth) instead of their keys"
    )
    limits: LimitSettings = Field(default_factory=LimitSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    cors_origins: List[str] = Field(
        default_factory=list, description="origins allowed by CORS, added to AgentOS's defaults (cors_defaults)"
    )
    cors_defaults: bool = Field(
        True, description="allow AgentOS's default origins (agno's Agent UI on localhost:3000, os.agno.com, ...)"
    )
    access_log: bool = Field(True, description="one JSON line per request on stdout")
    shutdown: ShutdownSettings = Field(default_factory=ShutdownSettings)
    doors: DoorSettings = Field(default_factory=DoorSettings)
    admin_key: Optional[str] = Field(
        None, min_length=16, repr=False, description="Bearer key of /admin; unset: the admin API is off"
    )
    local_db: Optional[str] = Field(
        None,
        pattern=LOCAL_DB_PATTERN,
        repr=False,
        description="database of local components that have none (sqlite:///FILE, postgresql://...); "
        "unset: a SQLite file in a private directory that lives as long as the gateway",
    )
    admin: AdminSettings = Field(default_factory=AdminSettings)

    @field_validator("admin")
    @classmethod
    def _admin_port_apart(cls, admin: AdminSettings, info: ValidationInfo) -> AdminSettings:
        problem = admin_port_problem(info.data.get("port"), admin.port)
        if problem:
            raise ValueError(problem)
        return admin

    @field_validator("upstreams")
    @classmethod
    def _unique_names(cls, upstreams: List[UpstreamConfig]) -> List[UpstreamConfig]:
        names = [upstream.name for upstream in upstreams]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"upstream names must be unique: {', '.join(duplicates)}")
        if any(upstream.name == IN_PROCESS_UPSTREAM for upstream in upstreams if upstream.dns is None):
            raise ValueError(f"the upstream name {IN_PROCESS_UPSTREAM!r} is the gateway's own (its local components' AgentOS)")
        return upstreams

    def allowed_origins(self) -> List[str]:
        """The origins CORS allows: AgentOS's defaults (unless ``cors_defaults: false``), then
        ``cors_origins``, each once. Empty: no CORS headers at all."""
        defaults = agentos_default_origins() if self.cors_defaults else []
        return list(dict.fromkeys([*defaults, *self.cors_origins]))

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


def admin_port_problem(port: Optional[int], admin_port: int) -> Optional[str]:
    """Why the admin listener cannot have ``admin_port`` next to the public ``port``, or None."""
    if admin_port and admin_port == port:
        return f"admin.port {admin_port} is the public port too: the admin listener needs a port of its own"
    return None


def load_settings(path: Optional[os.PathLike[str] | str] = None) -> Settings:
    """Settings from ``path`` (or ``$GATEWAY_CONFIG``) and the environment.

    Without any file, the demo components are served locally (the embedded default).
    """
    path = path or os.environ.get(CONFIG_ENV) or None
    values: Dict[str, Any] = _read_yaml(Path(path)) if path else {"local": DEMO_LOCAL.model_dump()}
    values = _with_upstream_env(values, os.environ)
    otherwise = str(path) if path else "environment"
    try:
        return Settings(**values)
    except ValidationError as error:
        raise ConfigError(_describe(error, otherwise=otherwise, values=values)) from None
    except SettingsError as error:  # an env value that is not JSON where JSON is needed
        raise ConfigError(_describe_unparsable(error)) from None


def agentos_default_origins() -> List[str]:
    """The origins an AgentOS allows by default: agno's own list, read from agno (the validator
    that fills ``agno.os.settings.AgnoAPISettings.cors_origin_list`` when nothing is given), so
    agno's UIs reach the gateway exactly where they reach an AgentOS, and an agno upgrade that
    changes the list changes it here too. Called directly rather than by building
    ``AgnoAPISettings()``, which would also read AgentOS's own environment variables."""
    from agno.os.settings import AgnoAPISettings

    return list(AgnoAPISettings.set_cors_origin_list(None))


UPSTREAM_ENV_FIELDS = ("url", "weight", "api_key")


def upstream_env_name(upstream: str, field: str) -> str:
    """``GATEWAY_UPSTREAM_<NAME>_<FIELD>``: NAME upper-cased, other characters as ``_``."""
    slug = "".join(char if char.isalnum() else "_" for char in upstream).upper()
    return f"GATEWAY_UPSTREAM_{slug}_{field.upper()}"


def _with_upstream_env(values: Dict[str, Any], environ: Dict[str, str]) -> Dict[str, Any]:
    """Each upstream's fields overridden from its own variables, e.g. ``GATEWAY_UPSTREAM_OS_A_API_KEY``
    (a list cannot be addressed field by field through pydantic-settings' nested names)."""
    upstreams = values.get("upstreams")
    if not isinstance(upstreams, list):
        return values
    merged = []
    for upstream in upstreams:
        if isinstance(upstream, dict) and isinstance(upstream.get("name"), str):
            upstream = dict(upstream)
            for field in UPSTREAM_ENV_FIELDS:
                value = environ.get(upstream_env_name(upstream["name"], field))
                if value is not None:
                    upstream[field] = value
        merged.append(upstream)
    return {**values, "upstreams": merged}


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


def _describe(error: ValidationError, *, otherwise: str, values: Dict[str, Any]) -> str:
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(root)"
        source = _upstream_env_source(item["loc"], values) or _env_source(item["loc"]) or otherwise
        lines.append(f"{source}: {field}: {item['msg']}")
    return "\n".join(lines)


def _upstream_env_source(loc: Sequence[Union[str, int]], values: Dict[str, Any]) -> Optional[str]:
    """``GATEWAY_UPSTREAM_<NAME>_<FIELD>`` when that variable set the bad upstream field."""
    if len(loc) < 3 or loc[0] != "upstreams" or not isinstance(loc[1], int) or loc[2] not in UPSTREAM_ENV_FIELDS:
        return None
    upstreams = values.get("upstreams")
    entry = upstreams[loc[1]] if isinstance(upstreams, list) and loc[1] < len(upstreams) else None
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        return None
    name = upstream_env_name(entry["name"], str(loc[2]))
    return name if name in os.environ else None


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
