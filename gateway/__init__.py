"""mcp-security-gateway: a sandboxing command-execution gateway for AI agents."""

__version__ = "0.1.0"
