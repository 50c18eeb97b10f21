"""Text handling for speech: cutting streamed text into speakable units."""

from duplex.text.chunker import TextChunker

__all__ = ["TextChunker"]
