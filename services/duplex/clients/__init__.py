"""Clients of the orchestrator's WebSocket protocol."""
