// livekit.js — WebRTC through LiveKit, when the server hands out room tokens
// (/api/livekit/token): the microphone is published as a track, the agent's reply arrives as
// a track, and JSON events travel on the data channel (topic "duplex"). livekit-client is
// loaded only then, from the bundled vendor/livekit-client.mjs.

// Joins a room; null when the server hands out no tokens (404). Throws when the room cannot
// be joined (the page then uses the WebSocket). `onMeter(frames, audible)` counts the reply
// audio played, every 100 ms; `onLeft()` when the room is left other than by `close()`.
export async function joinRoom({ headers, choice, micTrack, onConnecting, onJson, onMeter, onLeft }) {
  const r = await fetch('/api/livekit/token', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...headers },
    body: JSON.stringify({ model: choice.model, voice: choice.voice }),
  });
  if (r.status === 404) return null;
  const grant = await r.json();
  if (!r.ok) throw new Error(grant?.error?.message || `token: HTTP ${r.status}`);

  const { Room, RoomEvent, Track } = await import('./vendor/livekit-client.mjs');
  const room = new Room({ adaptiveStream: false, dynacast: false });
  const remote = []; // the agent's audio elements, and their meters
  let live = true;
  let joined = false; // until then a failure rejects this call and the page falls back
  let jitterBufferTarget = null;

  const leave = () => {
    live = false;
    for (const item of remote) {
      if (item instanceof HTMLMediaElement) item.remove();
      else item.stop();
    }
    remote.length = 0;
    room.disconnect().catch(() => {});
  };

  // The agent's track plays through an audio element; what arrives is metered from the
  // receiver's statistics: every 20 ms with sound counts as a frame played, as on the
  // WebSocket.
  const playRemote = (track) => {
    // The smallest playout delay the browser allows: the agent already paces the reply at
    // real time, and what the jitter buffer holds is heard after a barge-in has silenced the
    // agent.
    const receiver = track.receiver;
    if (receiver && 'jitterBufferTarget' in receiver) receiver.jitterBufferTarget = 0;
    else if (receiver && 'playoutDelayHint' in receiver) receiver.playoutDelayHint = 0;
    jitterBufferTarget = receiver?.jitterBufferTarget ?? null;
    const el = track.attach();
    el.dataset.duplex = 'reply';
    document.body.appendChild(el);
    let last = null;
    const timer = setInterval(async () => {
      let report;
      try {
        report = await track.getRTCStatsReport();
      } catch {
        return;
      }
      report?.forEach((v) => {
        if (v.type !== 'inbound-rtp' || typeof v.totalSamplesDuration !== 'number') return;
        if (last) {
          const frames = Math.round((v.totalSamplesDuration - last.totalSamplesDuration) * 50);
          // A level above about -40 dBFS: speech, not silence or comfort noise.
          onMeter(frames, frames > 0 && (v.audioLevel || 0) > 0.01);
        }
        last = v;
      });
    }, 100);
    remote.push(el, { stop: () => clearInterval(timer) });
  };

  onConnecting();
  room.on(RoomEvent.DataReceived, (payload, _participant, _kind, topic) => {
    if (!live || topic !== 'duplex') return;
    onJson(new TextDecoder().decode(payload));
  });
  room.on(RoomEvent.TrackSubscribed, (track) => {
    if (live && track.kind === Track.Kind.Audio) playRemote(track);
  });
  room.on(RoomEvent.Disconnected, () => {
    if (!live || !joined) return;
    leave();
    onLeft();
  });
  try {
    // Fail fast to the WebSocket when the LiveKit server is out of reach (UDP blocked, down).
    const connecting = room.connect(grant.url, grant.token, {
      maxRetries: 0,
      websocketTimeout: 5000,
      peerConnectionTimeout: 8000,
    });
    let timer;
    const deadline = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error('LiveKit did not answer in 10 s')), 10000);
    });
    try {
      await Promise.race([connecting, deadline]);
    } finally {
      clearTimeout(timer);
    }
    if (micTrack) {
      await room.localParticipant.publishTrack(micTrack, { source: Track.Source.Microphone, name: 'microphone' });
    }
  } catch (err) {
    leave();
    throw err;
  }
  joined = true;
  return {
    kind: 'livekit',
    room,
    get jitterBufferTarget() {
      return jitterBufferTarget;
    },
    send(obj, onError) {
      if (!live) return false;
      const data = new TextEncoder().encode(JSON.stringify(obj));
      room.localParticipant.publishData(data, { reliable: true, topic: 'duplex' }).catch(onError);
      return true;
    },
    sendAudio() {
      return false; // the microphone travels as a track
    },
    close: leave,
  };
}
