"""Upstream MCP servers (``mcp.servers``) run in the sandbox: ``servers`` (the sandboxes and
their client sessions), ``pins`` (approved tool definitions), ``results`` (what a result may
carry back), ``cli`` (``mcp-gateway mcp tools|approve``)."""
