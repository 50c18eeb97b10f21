"""The TTS worker: model manager, adapters and the gRPC streaming service."""
