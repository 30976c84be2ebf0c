"""Media reach the run on every path: in-process, a real AgentOS (protocol "agentos") and a real
gateway (protocol "v1") receive the same images and files, bytes and all.

What proves it is agno's own answer: an agent's or team's output carries the run's input media
in ``output.input`` (its ``RunInput``), a workflow's output in ``output.images``/``output.files``.
"""

from __future__ import annotations

import base64
from typing import Any, Dict, List, Tuple

import pytest
from agno.media import File, Image
from agno.run.base import RunStatus

from gateway import AgentOSRunner
from gateway.demo import build_demo
from tests.conftest import INSTANCE

LOCAL = build_demo(instance=INSTANCE)
IDS = {"agent": "echo-agent", "team": "echo-team", "workflow": "echo-workflow"}
TARGETS = ["local", "agentos", "v1"]

# A 1x1 PNG, and file contents that are not text: any re-encoding on the way would show.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
PDF = b"%PDF-1.4\n\xe2\xe3\xcf\xd3\n%%EOF\n"


def _media() -> Dict[str, List[Any]]:
    return {
        "images": [
            Image(url="https://example.com/cat.png", id="image-by-url"),
            Image(content=PNG, mime_type="image/png", id="image-by-content"),
        ],
        "files": [
            File(content=PDF, mime_type="application/pdf", filename="report.pdf", id="file-pdf"),
            File(content=b"a,b\n1,2\n", mime_type="text/csv", filename="table.csv", id="file-csv"),
        ],
    }


def _tuples(images: List[Image], files: List[File]) -> Dict[str, List[Tuple[Any, ...]]]:
    return {
        "images": [(image.id, image.url, image.content, image.mime_type) for image in images],
        "files": [(file.id, file.content, file.mime_type, file.filename) for file in files],
    }


def _received(kind: str, output: Any) -> Dict[str, List[Tuple[Any, ...]]]:
    """The media the run was given, as agno's answer reports them."""
    holder = output if kind == "workflow" else output.input
    return _tuples(holder.images or [], holder.files or [])


def _runner(kind: str, target: str, upstream, gateway) -> AgentOSRunner:
    if target == "local":
        return AgentOSRunner(**{kind: getattr(LOCAL, kind)})
    if target == "agentos":
        return AgentOSRunner(base_url=upstream.url, protocol="agentos", **{f"{kind}_id": IDS[kind]})
    return AgentOSRunner(base_url=gateway.url, **{f"{kind}_id": IDS[kind]})


@pytest.mark.parametrize("kind", list(IDS))
async def test_images_and_files_arrive_on_every_path(kind: str, upstream, gateway) -> None:
    expected = _tuples(**_media())
    for target in TARGETS:
        async with _runner(kind, target, upstream, gateway) as runner:
            output = await runner.arun("look at these", **_media())
        assert output.status == RunStatus.completed, (target, output.content)
        assert _received(kind, output) == expected, target

