"""The balancing core stays sans-IO: it imports the standard library and itself, nothing else."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import gateway.balancing

FORBIDDEN = {"asyncio", "socket", "fastapi", "starlette", "httpx", "aiohttp", "agno", "time"}


def test_balancing_imports_only_the_standard_library() -> None:
    package = Path(gateway.balancing.__file__).parent
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                roots = {node.module.split(".")[0]}
            else:
                continue
            for root in roots:
                assert root not in FORBIDDEN, f"{source.name} imports {root}"
                assert root == "gateway" or root in sys.stdlib_module_names, f"{source.name} imports {root}"
