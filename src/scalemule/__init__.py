"""ScaleMule: one production backend for the apps AI agents build, served over MCP."""

__version__ = "0.1.0"
