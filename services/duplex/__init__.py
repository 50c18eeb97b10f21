"""duplex: realtime speech-to-speech with hot-swappable TTS workers."""

__version__ = "0.1.0"
