// audio.js — the page's audio: an AudioContext (48 kHz when allowed), the microphone through
// the capture worklet (20 ms int16 chunks), and the playback worklet, whose ring buffer plays
// the reply frames the WebSocket brings. Owns the graph; others get chunks and counters.

const audio = {
  ctx: null,
  forcedRate: false, // ctx was created with sampleRate 48000
  mic: null,
  micSource: null,
  captureNode: null,
  playbackNode: null,
  sink: null,
  onChunk: null, // ({pcm, peak}) for each 20 ms of microphone audio
  onPlayback: null, // the playback worklet's reports
};

export function sampleRate() {
  return audio.ctx ? audio.ctx.sampleRate : null;
}

// The microphone's track (LiveKit publishes it), or null without a microphone.
export function micTrack() {
  return audio.mic ? audio.mic.getAudioTracks()[0] || null : null;
}

export function hasMic() {
  return audio.mic != null;
}

function newContext(force48k) {
  // 48 kHz matches the server's reply audio, so the player needs no resampling.
  if (force48k) {
    try {
      audio.forcedRate = true;
      return new AudioContext({ sampleRate: 48000, latencyHint: 'interactive' });
    } catch {
      /* browser refused the rate: fall through to its native rate */
    }
  }
  audio.forcedRate = false;
  return new AudioContext({ latencyHint: 'interactive' });
}

async function getMic(warn) {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    warn('Microphone API unavailable (the page needs https or localhost) — you can still type.');
    return null;
  }
  try {
    return await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
    });
  } catch (err) {
    warn(`Microphone unavailable (${err.name || err.message}) — you can still type.`);
    return null;
  }
}

// resume() never settles without a user gesture in some browsers; don't hang on it.
async function resumeContext(ctx) {
  await Promise.race([ctx.resume().catch(() => {}), new Promise((r) => setTimeout(r, 1500))]);
  if (ctx.state !== 'running') throw new Error('audio is blocked by the browser until you click Start');
}

async function buildGraph() {
  const ctx = audio.ctx;
  await ctx.audioWorklet.addModule(new URL('./capture-worklet.js', import.meta.url));
  await ctx.audioWorklet.addModule(new URL('./playback-worklet.js', import.meta.url));

  // Create the mic source first: in Firefox it throws NotSupportedError when the mic
  // rate differs from a forced 48 kHz context, and we retry before building anything.
  const micSource = audio.mic ? ctx.createMediaStreamSource(audio.mic) : null;

  const playback = new AudioWorkletNode(ctx, 'playback-processor', {
    numberOfInputs: 0,
    numberOfOutputs: 1,
    outputChannelCount: [1],
    processorOptions: { bufferSeconds: 10 },
  });
  playback.port.onmessage = (e) => audio.onPlayback && audio.onPlayback(e.data);
  playback.connect(ctx.destination); // must reach destination or Chromium never renders it
  audio.playbackNode = playback;

  if (micSource) {
    const capture = new AudioWorkletNode(ctx, 'capture-processor', {
      numberOfInputs: 1,
      numberOfOutputs: 1,
      channelCount: 1,
      channelCountMode: 'explicit', // graph down-mixes to mono for us
    });
    capture.port.onmessage = (e) => e.data && e.data.pcm && audio.onChunk && audio.onChunk(e.data);
    // A muted sink keeps the capture node in the rendered graph without echoing the mic.
    const sink = ctx.createGain();
    sink.gain.value = 0;
    micSource.connect(capture);
    capture.connect(sink);
    sink.connect(ctx.destination);
    audio.micSource = micSource;
    audio.captureNode = capture;
    audio.sink = sink;
  }
}

// Call from a click (the browser's user activation). `warn` tells the user about a missing
// microphone: the page still works by typing.
export async function startAudio({ onChunk, onPlayback, warn }) {
  audio.onChunk = onChunk;
  audio.onPlayback = onPlayback;
  audio.ctx = newContext(true); // synchronously, inside the click's user activation
  const micPromise = getMic(warn);
  await resumeContext(audio.ctx);
  audio.mic = await micPromise;
  try {
    await buildGraph();
  } catch (err) {
    if (!(err && err.name === 'NotSupportedError' && audio.forcedRate)) throw err;
    // Mic and context rates differ (Firefox): rebuild at the native rate; the
    // playback worklet then resamples 48 kHz linearly.
    await audio.ctx.close().catch(() => {});
    audio.ctx = newContext(false);
    await resumeContext(audio.ctx);
    await buildGraph();
  }
}

// 48 kHz int16 reply frames into the playback ring buffer.
export function play(buf) {
  if (audio.playbackNode) audio.playbackNode.port.postMessage({ cmd: 'push', pcm: buf }, [buf]);
}

// pause | resume | flush the playback buffer.
export function playback(cmd) {
  if (audio.playbackNode) audio.playbackNode.port.postMessage({ cmd });
}

// Releases the microphone and the graph; safe to call repeatedly.
export async function stopAudio() {
  if (audio.captureNode) {
    audio.captureNode.port.postMessage({ cmd: 'stop' });
    audio.captureNode.port.onmessage = null;
  }
  if (audio.playbackNode) audio.playbackNode.port.onmessage = null;
  for (const node of [audio.micSource, audio.captureNode, audio.sink, audio.playbackNode]) {
    if (node) {
      try {
        node.disconnect();
      } catch {
        /* not connected */
      }
    }
  }
  if (audio.mic) for (const t of audio.mic.getTracks()) t.stop();
  const ctx = audio.ctx;
  audio.micSource = audio.captureNode = audio.sink = audio.playbackNode = audio.mic = null;
  audio.ctx = null;
  audio.onChunk = audio.onPlayback = null;
  if (ctx && ctx.state !== 'closed') await ctx.close().catch(() => {});
}
