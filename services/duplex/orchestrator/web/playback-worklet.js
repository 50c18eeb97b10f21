// playback-worklet.js — reply audio player for duplex.
// A ring buffer of 48 kHz mono samples that plays continuously, outputs silence on
// underrun and obeys {cmd:"flush"|"pause"|"resume"} instantly (the next render
// quantum, ~2.7 ms), which is what makes barge-in feel immediate.
//
// Messages in : {cmd:"push", pcm:ArrayBuffer(int16 LE @48k)}, {cmd:"flush"},
//               {cmd:"pause"}, {cmd:"resume"}
// Messages out: {type:"started", ...stats}  first sample played after the buffer was empty
//               {type:"stats", framesPlayed, bufferedMs, paused, dropped}  every ~100 ms

const SOURCE_RATE = 48000; // server audio is always 48 kHz
const FRAME = SOURCE_RATE / 50; // 960 samples = one 20 ms wire frame

class PlaybackProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.cap = Math.ceil(SOURCE_RATE * (opts.bufferSeconds || 10));
    this.buf = new Float32Array(this.cap);
    this.r = 0; // read index
    this.w = 0; // write index
    this.n = 0; // samples buffered
    // Linear resampling only when the context could not be created at 48 kHz.
    this.step = SOURCE_RATE / sampleRate;
    this.frac = 0; // position between buf[r] and buf[r+1] when resampling
    this.need = this.step === 1 ? 1 : 2; // samples needed to produce one output sample
    this.paused = false;
    this.idle = true; // true until audio plays after being empty -> "started"
    this.consumed = 0; // total source samples played (drives framesPlayed)
    this.dropped = 0; // samples discarded because the ring was full
    this.quanta = 0;
    this.reportEvery = Math.max(1, Math.round((sampleRate * 0.1) / 128));
    this.port.onmessage = (e) => this.onMessage(e.data || {});
  }

  onMessage(m) {
    switch (m.cmd) {
      case 'push':
        this.push(new Int16Array(m.pcm));
        break;
      case 'flush':
        this.r = this.w = this.n = 0;
        this.frac = 0;
        this.idle = true; // the next reply's first sample counts as a new start
        this.report('stats');
        break;
      case 'pause':
        this.paused = true;
        this.report('stats');
        break;
      case 'resume':
        this.paused = false;
        this.report('stats');
        break;
    }
  }

  push(pcm) {
    const cap = this.cap;
    for (let i = 0; i < pcm.length; i++) {
      if (this.n === cap) {
        // Full (10 s ahead): drop the oldest sample so latency stays bounded.
        this.r = (this.r + 1) % cap;
        this.n--;
        this.dropped++;
      }
      this.buf[this.w] = pcm[i] / 32768;
      this.w = (this.w + 1) % cap;
      this.n++;
    }
  }

  report(type) {
    this.port.postMessage({
      type,
      framesPlayed: Math.floor(this.consumed / FRAME),
      bufferedMs: (this.n * 1000) / SOURCE_RATE,
      paused: this.paused,
      dropped: this.dropped,
    });
  }

  process(inputs, outputs) {
    const out = outputs[0];
    if (!out || out.length === 0) return true;
    const ch0 = out[0];
    const len = ch0.length;
    const buf = this.buf;
    const cap = this.cap;
    let i = 0;

    if (!this.paused) {
      if (this.step === 1) {
        // Common case: context runs at 48 kHz, copy straight out of the ring.
        const k = Math.min(len, this.n);
        let r = this.r;
        for (; i < k; i++) {
          ch0[i] = buf[r];
          r = r + 1 === cap ? 0 : r + 1;
        }
        this.r = r;
        this.n -= k;
        this.consumed += k;
      } else {
        while (i < len && this.n >= 2) {
          const a = buf[this.r];
          const b = buf[(this.r + 1) % cap];
          ch0[i++] = a + (b - a) * this.frac;
          this.frac += this.step;
          while (this.frac >= 1 && this.n > 1) {
            this.frac -= 1;
            this.r = (this.r + 1) % cap;
            this.n--;
            this.consumed++;
          }
        }
      }
      if (i > 0 && this.idle) {
        this.idle = false;
        this.report('started');
      }
      // Ran dry while playing: the next audio to arrive is a (re)start.
      if (this.n < this.need) this.idle = true;
    }

    ch0.fill(0, i); // silence for underrun / pause
    for (let c = 1; c < out.length; c++) out[c].set(ch0);

    if (++this.quanta >= this.reportEvery) {
      this.quanta = 0;
      this.report('stats');
    }
    return true;
  }
}

registerProcessor('playback-processor', PlaybackProcessor);
