"""The gRPC streaming ABI (`tts.TTSService`): generated stubs and a typed client."""
