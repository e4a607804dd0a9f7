"""Thin adapters built from the registry: MCP server, CLI, schema and doc generators."""
