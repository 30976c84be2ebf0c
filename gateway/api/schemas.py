"""The v1 JSON request body: agno's ``arun`` arguments under their own names."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

# arun() keywords that change how a run executes, not what it does: they change the stream's
# shape or hand over server objects. ``background`` is a field of its own (upstream entities only).
EXECUTION_KEYWORDS = frozenset({"background_tasks", "yield_run_output", "websocket", "enable_websocket", "run_context"})

MediaList = Optional[List[Dict[str, Any]]]


class RunRequest(BaseModel):
    """``POST /v1/{agents|teams|workflows}/{id}/run``. Fields not listed here are passed to
    ``arun(**kwargs)`` as AgentOS passes extra form fields."""

    model_config = ConfigDict(extra="allow")

    input: Union[str, Dict[str, Any], List[Any]] = Field(description="the message: text, object or list")
    stream: bool = Field(False, description="answer as text/event-stream with AgentOS's frames")
    stream_events: Optional[bool] = Field(
        None, description="every event, not only content; default true, as AgentOS's run routes"
    )
    background: Optional[bool] = Field(
        None,
        description="upstream entities only: AgentOS's background run (202 and PENDING without stream; "
        "with stream, a run that outlives its client and can be resumed)",
    )
    session_id: Optional[str] = None  # capped by gateway.wire.ids (400 naming it, in UTF-8 bytes)
    user_id: Optional[str] = Field(None, max_length=256)
    run_id: Optional[str] = None  # likewise
    session_state: Optional[Dict[str, Any]] = None
    dependencies: Optional[Dict[str, Any]] = None
    metadata: Optional[Dict[str, Any]] = None
    knowledge_filters: Optional[Union[Dict[str, Any], List[Any]]] = None
    add_history_to_context: Optional[bool] = None
    add_dependencies_to_context: Optional[bool] = None
    add_session_state_to_context: Optional[bool] = None
    retries: Optional[int] = Field(None, ge=0)
    debug_mode: Optional[bool] = None
    images: MediaList = None
    audio: MediaList = None
    videos: MediaList = None
    files: MediaList = None

    @model_validator(mode="after")
    def _no_execution_keywords(self) -> "RunRequest":
        refused = sorted(EXECUTION_KEYWORDS & set(self.model_extra or {}))
        if refused:
            raise ValueError(f"not accepted by this API: {', '.join(refused)}")
        return self
