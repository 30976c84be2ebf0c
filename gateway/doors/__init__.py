"""AgentOS's other doors: AG-UI, A2A, MCP and the workflow WebSocket. ``membership.py`` says
which upstream serves which door where; ``http.py`` dispatches the HTTP doors, ``handlers.py``
names each door's module."""
