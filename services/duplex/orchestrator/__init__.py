"""The conversation orchestrator: sessions, barge-in, routing and transports."""
