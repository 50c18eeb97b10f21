"""duplex_operator: the Kubernetes operator for TTSModel and VoiceSession resources."""
