// ws.js — the WebSocket transport (/ws): JSON text frames both ways; the microphone goes out
// as 20 ms int16 binary frames, and the reply comes back as 48 kHz int16 frames for the page to
// play itself (so barge-in reaches it as playback events).

// Close codes after which the page reconnects by itself: going away (a server restart),
// abnormal closure (the connection dropped), internal error, service restart.
export const RECONNECT_CODES = new Set([1001, 1006, 1011, 1012]);
// Try Again Later: every TTS slot is taken.
export const BUSY = 1013;

// `hello()` is the session.start sent first; the callbacks hear only this socket, until it
// closes or is closed here.
export function openSocket({ token, hello, onOpen, onJson, onAudio, onClose }) {
  const query = token ? `?token=${encodeURIComponent(token)}` : '';
  const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws${query}`;
  const ws = new WebSocket(url);
  ws.binaryType = 'arraybuffer';
  let live = true;
  ws.onopen = () => {
    if (!live) return;
    ws.send(JSON.stringify(hello())); // must be the first message
    onOpen();
  };
  ws.onmessage = (ev) => {
    if (!live) return;
    if (typeof ev.data === 'string') onJson(ev.data);
    else onAudio(ev.data);
  };
  ws.onerror = () => {
    /* details arrive with the close event */
  };
  ws.onclose = (ev) => {
    if (!live) return;
    live = false;
    onClose(ev.code, ev.reason);
  };
  return {
    kind: 'websocket',
    send(obj) {
      if (ws.readyState !== WebSocket.OPEN) return false;
      ws.send(JSON.stringify(obj));
      return true;
    },
    // 20 ms of microphone audio; false when it was not sent.
    sendAudio(pcm, sampleRate) {
      if (ws.readyState !== WebSocket.OPEN) return false;
      // If the socket is backed up (>~1 s of audio), drop: stale speech is worse than a gap.
      if (ws.bufferedAmount > 2 * sampleRate) return false;
      ws.send(pcm);
      return true;
    },
    // Detached first: its close event is not reported.
    close(code, reason) {
      live = false;
      try {
        ws.close(code, reason);
      } catch {
        /* already closing */
      }
    },
  };
}
