"""Run requests on the wire: agno's ``arun`` arguments to the v1 JSON body or the AgentOS form,
and media back from the wire to agno's media objects.

Media travel as agno's own dicts (``Image.to_dict()`` ...), the format AgentOS's form fields
``images``, ``audio``, ``videos`` and ``input_files`` take, so no encoding of ours exists to drift.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence

from agno.models.message import Message
from pydantic import BaseModel

# arun() keyword -> the AgentOS form field that carries it as a JSON array of media dicts.
MEDIA_FORM_FIELDS = {"images": "images", "audio": "audio", "videos": "videos", "files": "input_files"}


def media_to_dicts(items: Optional[Sequence[Any]]) -> Optional[List[Dict[str, Any]]]:
    if not items:
        return None
    return [item if isinstance(item, dict) else item.to_dict() for item in items]


def media_from_dicts(field: str, dicts: Optional[List[Dict[str, Any]]]) -> Optional[List[Any]]:
    """agno media objects from wire dicts; ``ValueError`` names the first broken item
    (``images[1]: ...``): a run never starts with part of its media silently dropped."""
    if not dicts:
        return None
    from agno.utils.media import reconstruct_audio_list, reconstruct_files, reconstruct_images, reconstruct_videos

    reconstruct, noun = {
        "images": (reconstruct_images, "Image"),
        "audio": (reconstruct_audio_list, "Audio"),
        "videos": (reconstruct_videos, "Video"),
        "files": (reconstruct_files, "File"),
    }[field]
    rebuilt: List[Any] = []
    for index, item in enumerate(dicts):
        # A storage reference from a request would let a caller name any object the server can read.
        cleaned = {key: value for key, value in item.items() if key != "media_reference"}
        # agno's reconstruct skips a broken item (logging why), so one at a time says which.
        items = reconstruct([cleaned]) or []
        if len(items) != 1:
            raise ValueError(
                f"{field}[{index}]: not an agno {noun}: give url, filepath or base64 content, "
                f"and only {noun}'s fields"
            )
        rebuilt.extend(items)
    return rebuilt


def input_to_json(value: Any) -> Any:
    """The run input as a JSON value: text, object or list (messages and models as dicts)."""
    if isinstance(value, Message):
        return value.to_dict()
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [input_to_json(item) for item in value]
    return value


def input_to_text(value: Any) -> str:
    """The run input as the AgentOS form's ``message`` string, as agno's own client sends it."""
    if isinstance(value, str):
        return value
    return json.dumps(input_to_json(value))


def v1_body(input: Any, *, stream: bool, params: Dict[str, Any]) -> Dict[str, Any]:
    """The JSON body of ``POST /v1/{kind}/{id}/run``: every non-None argument under its own name."""
    body: Dict[str, Any] = {"input": input_to_json(input), "stream": stream}
    for key, value in params.items():
        if value is None:
            continue
        body[key] = media_to_dicts(value) if key in MEDIA_FORM_FIELDS else value
    return body


def agentos_form(input: Any, *, stream: bool, params: Dict[str, Any]) -> Dict[str, str]:
    """The form of ``POST /{kind}/{id}/runs``, encoded as agno's ``AgentOSClient`` encodes it.

    ``stream`` is always sent: an omitted field means True to AgentOS.
    """
    form: Dict[str, str] = {"message": input_to_text(input), "stream": _form_value(stream)}
    for key, value in params.items():
        if value is None:
            continue
        if key in MEDIA_FORM_FIELDS:
            form[MEDIA_FORM_FIELDS[key]] = json.dumps(media_to_dicts(value))
        else:
            form[key] = _form_value(value)
    return form


def _form_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def v1_json_to_form(data: Dict[str, Any]) -> Dict[str, str]:
    """A v1 JSON body (already validated) as the AgentOS run form, for an upstream.

    Media stay agno's dicts, under the form field AgentOS reads them from.
    """
    form: Dict[str, str] = {"message": input_to_text(data["input"]), "stream": _form_value(bool(data.get("stream")))}
    for key, value in data.items():
        if value is None or key in ("input", "stream"):
            continue
        form[MEDIA_FORM_FIELDS.get(key, key)] = _form_value(value)
    return form
