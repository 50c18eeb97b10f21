// app.js — the duplex page: one conversation over one transport.
//
// Flow: Start → audio (audio.js: 48 kHz when allowed, worklets, microphone) → a transport:
// WebRTC through LiveKit when the server hands out room tokens (livekit.js), otherwise, or
// when LiveKit fails, the WebSocket (ws.js). ?transport=ws|livekit forces one. The server's
// JSON events (the protocol of /api/schema) drive the page (ui.js) either way.
// window.duplex exposes live state for browser tests (see the bottom of this file).

import { hasMic, micTrack, play, playback, sampleRate, startAudio, stopAudio } from './audio.js';
import { joinRoom } from './livekit.js';
import {
  beginUserTurn,
  choice,
  closeBotBubble,
  closeUserBubble,
  fillVoiceAndLanguage,
  forgetCutReply,
  reopenCutReply,
  showConnection,
  showControls,
  showMetrics,
  showMicLevel,
  showModels,
  showReply,
  showSession,
  showState,
  showStats,
  showTranscript,
  showTurn,
  showTyped,
  sysMsg,
  ui,
} from './ui.js';
import { BUSY, RECONNECT_CODES, openSocket } from './ws.js';

const params = new URLSearchParams(location.search);
// A session token from the site that sent us here (?token=), when the server asks for one.
const TOKEN = params.get('token');
const authHeaders = TOKEN ? { Authorization: `Bearer ${TOKEN}` } : {};
const LOG_CAP = 10000; // keep the test-hook logs bounded on very long sessions

// The conversation.
const S = {
  state: 'idle', // idle | connecting | listening | thinking | speaking | barged_in
  starting: false,
  running: false, // audio is up (the microphone may still be missing)
  connected: false, // WebSocket open, or LiveKit room joined
  link: null, // the transport: ws.js's socket or livekit.js's room
  transport: null, // its kind: 'websocket' | 'livekit'
  reconnects: 0, // automatic reconnections since the last session started
  reconnectTimer: null,
  sessionId: null,
  model: null,
  paused: false,
  log: [], // the server's messages
  sent: [], // the messages this page sent
  metrics: {},
  turn: null, // the last turn's breakdown: where its voice-to-voice time went
  replyAudioMs: null,
  finalAt: null, // performance.now() of the last final user input still awaiting reply audio
};

// Reply and microphone audio, counted.
const frames = {
  received: 0,
  sent: 0,
  played: 0,
  playedBefore: 0, // played by earlier (torn-down) playback worklets
  bufferedMs: 0,
  dropped: 0,
};

function setState(state) {
  S.state = String(state);
  showState(S.state);
}

function setConn(conn) {
  showConnection(conn, S.transport);
}

function updateControls() {
  showControls(S);
}

function renderStats() {
  showStats({
    received: frames.received,
    played: frames.played,
    sent: frames.sent,
    bufferedMs: frames.bufferedMs,
    sampleRate: sampleRate(),
    dropped: frames.dropped,
  });
}

function renderMetrics() {
  showMetrics(S.metrics, S.replyAudioMs);
}

function remember(list, item) {
  list.push(item);
  if (list.length > LOG_CAP) list.splice(0, list.length - LOG_CAP);
  return item;
}

// ---------------------------------------------------------------- models

async function loadModels() {
  let models = [];
  let defaultModel = null;
  try {
    const r = await fetch('/api/models', { cache: 'no-store', headers: authHeaders });
    if (r.status === 401) {
      throw new Error('this server asks for a session token: open the page with the link (…?token=…) your site gave you');
    }
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const data = await r.json();
    models = Array.isArray(data.models) ? data.models : [];
    defaultModel = data.default_model ?? (models[0] && models[0].model_id) ?? null;
  } catch (err) {
    sysMsg(`Could not load the model list (${err.message}); the server default will be used.`, 'warn');
  }
  showModels(models, defaultModel);
}

function sessionStartMessage() {
  const { model, voice, language } = choice();
  const msg = { type: 'session.start', sample_rate: sampleRate() };
  if (model) msg.model = model;
  msg.voice = voice;
  if (language) msg.language = language;
  return msg;
}

// ---------------------------------------------------------------- audio in and out

function onCaptureChunk(data) {
  showMicLevel(data.peak);
  if (S.link && S.link.sendAudio(data.pcm, sampleRate())) frames.sent++;
}

function onPlaybackMessage(m) {
  if (!m) return;
  // Over LiveKit the worklet plays nothing; the agent's track is metered by livekit.js.
  if (typeof m.framesPlayed === 'number' && S.transport === 'websocket') {
    frames.played = frames.playedBefore + m.framesPlayed;
  }
  if (typeof m.bufferedMs === 'number') frames.bufferedMs = m.bufferedMs;
  if (typeof m.dropped === 'number') frames.dropped = m.dropped;
  if (m.type === 'started') replyAudioStarted();
  renderStats();
}

// Browser-side latency: final user input → first reply sample rendered.
function replyAudioStarted() {
  if (S.finalAt == null) return;
  S.replyAudioMs = performance.now() - S.finalAt;
  S.finalAt = null;
  renderMetrics();
}

function onAudio(buf) {
  frames.received++;
  // int16 needs an even byte count; drop a stray trailing byte rather than throw.
  if (buf.byteLength & 1) buf = buf.slice(0, buf.byteLength - 1);
  play(buf);
  if (frames.received % 10 === 0) renderStats();
}

function onMeter(count, audible) {
  frames.received += count;
  if (audible) {
    replyAudioStarted();
    frames.played += count;
  }
  renderStats();
}

// ---------------------------------------------------------------- transports

async function connect() {
  const wanted = params.get('transport');
  if (wanted !== 'ws' && wanted !== 'websocket') {
    try {
      if (await openRoom()) return;
    } catch (err) {
      S.link = null;
      sysMsg(`WebRTC unavailable (${err && err.message ? err.message : err}); using the WebSocket.`, 'warn');
    }
  }
  openWebSocket();
}

async function openRoom() {
  const link = await joinRoom({
    headers: authHeaders,
    choice: choice(),
    micTrack: micTrack(),
    onConnecting: () => {
      S.transport = 'livekit';
      S.sessionId = null;
      setConn('connecting');
    },
    onJson,
    onMeter,
    onLeft: () => {
      if (S.link !== link) return;
      S.link = null;
      S.connected = false;
      sysMsg('Left the room.', 'warn');
      ui.startBtn.dataset.reconnect = 'true';
      teardown();
    },
  });
  if (link === null) return false;
  S.link = link;
  S.connected = true;
  setConn('connected');
  updateControls();
  return true;
}

function openWebSocket() {
  S.transport = 'websocket';
  S.sessionId = null;
  setConn('connecting');
  const link = openSocket({
    token: TOKEN,
    hello: () => remember(S.sent, sessionStartMessage()),
    onOpen: () => {
      S.connected = true;
      setConn('connected');
      updateControls();
    },
    onJson,
    onAudio,
    onClose: (code, reason) => {
      S.link = null;
      S.connected = false;
      if (code === BUSY) {
        // Every TTS slot is taken; the error event before it said so too.
        sysMsg('The service is busy right now: every voice is in use. Press Start to try again in a moment.', 'warn');
      } else if (RECONNECT_CODES.has(code)) {
        // The server went away (a restart, a network blip): come back on our own.
        const delay = Math.min(10000, 1000 * 2 ** S.reconnects);
        S.reconnects += 1;
        sysMsg(`Connection lost (code ${code}); reconnecting in ${Math.round(delay / 1000)} s…`, 'warn');
        S.reconnectTimer = setTimeout(() => {
          S.reconnectTimer = null;
          start();
        }, delay);
      } else {
        const why = reason ? `: ${reason}` : '';
        sysMsg(`Connection closed (code ${code}${why}).`, code === 1000 ? undefined : 'warn');
      }
      ui.startBtn.dataset.reconnect = 'true';
      teardown();
    },
  });
  S.link = link;
}

function closeLink(code, reason) {
  const link = S.link;
  S.link = null; // detached first, so that its close is not reported
  if (link) link.close(code, reason);
}

function sendJson(obj) {
  remember(S.sent, obj);
  if (!S.link || !S.connected) return false;
  return S.link.send(obj, (err) => {
    sysMsg(`Could not send: ${err && err.message ? err.message : err}`, 'warn');
  });
}

// ---------------------------------------------------------------- the server's events

function onJson(text) {
  let msg;
  try {
    msg = JSON.parse(text);
  } catch {
    sysMsg('Received a malformed message from the server.', 'warn');
    return;
  }
  if (!msg || typeof msg !== 'object') return;
  remember(S.log, msg);

  switch (msg.type) {
    case 'session.started':
      S.reconnects = 0;
      S.sessionId = msg.session_id ?? null;
      S.model = msg.model ?? null;
      showSession(S.sessionId, S.model);
      break;
    case 'state':
      setState(msg.state);
      break;
    case 'transcript':
      if (showTranscript(typeof msg.text === 'string' ? msg.text : '', !!msg.final)) {
        S.finalAt = performance.now();
      }
      break;
    case 'reply':
      showReply(typeof msg.text === 'string' ? msg.text : '', !!msg.final);
      break;
    case 'barge_in':
      closeBotBubble(true);
      if (typeof msg.latency_ms === 'number') {
        S.metrics.barge_in_event_ms = msg.latency_ms;
        renderMetrics();
      }
      break;
    case 'playback':
      if (msg.action === 'pause' || msg.action === 'resume' || msg.action === 'flush') playback(msg.action);
      if (msg.action === 'resume') reopenCutReply();
      break;
    case 'metrics':
      for (const [k, v] of Object.entries(msg)) {
        if (k === 'type' || v === null || typeof v === 'object') continue;
        S.metrics[k] = v;
      }
      if (msg.turn && typeof msg.turn === 'object') {
        S.turn = msg.turn;
        showTurn(S.turn);
      }
      renderMetrics();
      break;
    case 'session.ended':
      sysMsg(`The conversation ended: ${msg.reason ?? 'the server closed it'}. Press Start to begin again.`, 'warn');
      break;
    case 'error':
      sysMsg(`Error${msg.code != null ? ` [${msg.code}]` : ''}: ${msg.message ?? 'unknown error'}`, 'error');
      break;
    default:
      break; // unknown types are kept in the log only
  }
}

// ---------------------------------------------------------------- actions

async function start() {
  if (S.running || S.starting) return;
  S.starting = true;
  delete ui.startBtn.dataset.reconnect;
  setState('connecting');
  updateControls();
  try {
    await startAudio({
      onChunk: onCaptureChunk,
      onPlayback: onPlaybackMessage,
      warn: (text) => sysMsg(text, 'warn'),
    });
    S.running = true;
    await connect();
  } catch (err) {
    sysMsg(`Could not start: ${err && err.message ? err.message : err}`, 'error');
    await teardown();
  } finally {
    S.starting = false;
    updateControls();
    renderStats();
  }
}

async function stop() {
  if (S.reconnectTimer) clearTimeout(S.reconnectTimer);
  S.reconnectTimer = null;
  S.reconnects = 0;
  closeLink(1000, 'client stop');
  const wasRunning = S.running;
  await teardown();
  delete ui.startBtn.dataset.reconnect;
  updateControls();
  if (wasRunning) sysMsg('Stopped.');
}

// Releases everything (transport, microphone, audio); safe to call repeatedly.
async function teardown() {
  S.connected = false;
  S.running = false;
  S.paused = false;
  frames.playedBefore = frames.played;
  closeLink(1000, 'client stop');
  const closing = stopAudio();
  frames.bufferedMs = 0;
  S.finalAt = null;
  closeUserBubble();
  beginUserTurn();
  showMicLevel(0);
  setState('idle');
  setConn('offline');
  updateControls();
  renderStats();
  await closing;
}

// Switch model/voice/language mid-call: a new session, the same audio.
function restartSession() {
  if (!S.running) return;
  S.paused = false;
  S.finalAt = null;
  forgetCutReply();
  const { model, voice } = choice();
  sysMsg(`Switching to ${model || 'default model'}${voice ? ` / ${voice}` : ''}…`);
  if (S.transport === 'livekit') {
    // The agent replaces its session in place; the room and the tracks stay.
    sendJson(sessionStartMessage());
    return;
  }
  closeLink(1000, 'session restart');
  S.connected = false;
  playback('flush');
  playback('resume');
  setState('connecting');
  updateControls();
  openWebSocket();
}

function sendText(t) {
  const text = String(t ?? '').trim();
  if (!text) return false;
  if (!sendJson({ type: 'text', text })) {
    sysMsg('Not connected — press Start first.', 'warn');
    return false;
  }
  showTyped(text);
  S.finalAt = performance.now(); // typed input counts as the final user turn
  return true;
}

function interrupt() {
  if (!sendJson({ type: 'control', command: 'stop' })) return false;
  playback('flush'); // cut locally too, without waiting a round trip
  closeBotBubble(true);
  return true;
}

function control(command) {
  return sendJson({ type: 'control', command });
}

// ---------------------------------------------------------------- wiring

ui.startBtn.addEventListener('click', () => {
  if (S.running) stop();
  else start();
});
ui.modelSel.addEventListener('change', () => {
  fillVoiceAndLanguage();
  restartSession();
});
ui.voiceSel.addEventListener('change', restartSession);
ui.langSel.addEventListener('change', restartSession);
ui.interruptBtn.addEventListener('click', interrupt);
ui.pauseBtn.addEventListener('click', () => {
  const next = !S.paused;
  if (control(next ? 'pause' : 'resume')) {
    S.paused = next;
    updateControls();
  }
});
ui.textForm.addEventListener('submit', (e) => {
  e.preventDefault();
  if (sendText(ui.textInput.value)) ui.textInput.value = '';
});
document.addEventListener('keydown', (e) => {
  if (e.key === 'Escape' && S.connected) interrupt();
});
window.addEventListener('pagehide', () => {
  if (S.running) stop();
});

// ---------------------------------------------------------------- test hook

window.duplex = {
  get state() { return S.state; },
  get log() { return S.log; },
  get sent() { return S.sent; },
  get framesPlayed() { return frames.played; },
  get framesReceived() { return frames.received; },
  get framesSent() { return frames.sent; },
  get connected() { return S.connected; },
  get transport() { return S.transport; },
  get jitterBufferTarget() { return S.link && S.link.kind === 'livekit' ? S.link.jitterBufferTarget : null; },
  get room() { return S.link && S.link.kind === 'livekit' ? S.link.room : null; },
  get running() { return S.running; },
  get sessionId() { return S.sessionId; },
  get model() { return S.model; },
  get sampleRate() { return sampleRate(); },
  get bufferedMs() { return frames.bufferedMs; },
  get mic() { return hasMic(); },
  get metrics() { return { ...S.metrics }; },
  get turn() { return S.turn ? { ...S.turn } : null; },
  get replyAudioMs() { return S.replyAudioMs; },
  start,
  stop,
  sendText,
  interrupt,
  control,
};

setState('idle');
updateControls();
renderMetrics();
renderStats();

const ready = loadModels();
if (params.get('autostart') === '1') ready.then(start);
