// capture-worklet.js — mic capture for duplex.
// Runs on the audio thread: converts the float mic signal to 16-bit PCM and posts
// exactly 20 ms chunks (sampleRate / 50 samples) to the main thread, which sends
// each one as a binary WebSocket message. Posting fixed-size chunks here keeps the
// main thread trivial and the server's framing exact.

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    // `sampleRate` is the AudioContext's rate (global in AudioWorkletGlobalScope).
    this.size = Math.round(sampleRate / 50);
    this.chunk = new Int16Array(this.size);
    this.fill = 0;
    this.peak = 0; // peak |sample| of the current chunk, for the page's level meter
    this.active = true;
    this.port.onmessage = (e) => {
      if (e.data && e.data.cmd === 'stop') this.active = false;
    };
  }

  process(inputs) {
    if (!this.active) return false; // lets the node be garbage-collected
    const input = inputs[0];
    // No channels means nothing is connected (yet); skip rather than invent audio.
    if (!input || input.length === 0) return true;
    // The node is created with channelCount 1 / 'explicit', so the graph already
    // down-mixed to mono: channel 0 is the whole signal.
    const ch = input[0];
    for (let i = 0; i < ch.length; i++) {
      let s = ch[i];
      if (s > 1) s = 1;
      else if (s < -1) s = -1;
      const a = s < 0 ? -s : s;
      if (a > this.peak) this.peak = a;
      // Asymmetric scale so -1 maps to -32768 and +1 to 32767 without overflow.
      this.chunk[this.fill++] = s < 0 ? s * 0x8000 : s * 0x7fff;
      if (this.fill === this.size) {
        const pcm = this.chunk.buffer;
        // Transfer (not copy) the buffer; Int16Array is little-endian on every
        // platform browsers run on, matching the wire format.
        this.port.postMessage({ pcm, peak: this.peak }, [pcm]);
        this.chunk = new Int16Array(this.size);
        this.fill = 0;
        this.peak = 0;
      }
    }
    return true;
  }
}

registerProcessor('capture-processor', CaptureProcessor);
