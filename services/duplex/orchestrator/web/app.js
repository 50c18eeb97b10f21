// app.js — duplex browser client (ES module).
//
// Flow: Start → AudioContext (48 kHz when allowed) → worklets → mic → a transport:
// - WebRTC through LiveKit when the server hands out room tokens (/api/livekit/token):
//   the mic is published as a track, the agent's reply arrives as a track, and JSON
//   events travel on the data channel (topic "duplex"). livekit-client is loaded only
//   then, from the bundled vendor/livekit-client.mjs.
// - otherwise (or when LiveKit fails) the WebSocket /ws: mic audio goes out as 20 ms
//   int16 binary frames; 48 kHz int16 frames that come back go to the playback
//   worklet's ring buffer.
// JSON events drive the UI either way. ?transport=ws|livekit forces one.
// window.duplex exposes live state for browser tests (see bottom of file).

const $ = (id) => document.getElementById(id);
const ui = {
  conn: $('conn'),
  startBtn: $('startBtn'),
  stateBadge: $('stateBadge'),
  stateText: $('stateText'),
  micLevel: $('micLevel'),
  modelSel: $('modelSel'),
  voiceField: $('voiceField'),
  voiceSel: $('voiceSel'),
  langField: $('langField'),
  langSel: $('langSel'),
  interruptBtn: $('interruptBtn'),
  pauseBtn: $('pauseBtn'),
  sessionInfo: $('sessionInfo'),
  log: $('log'),
  textForm: $('textForm'),
  textInput: $('textInput'),
  sendBtn: $('sendBtn'),
  metrics: $('metrics'),
  turn: $('turn'),
  stats: $('stats'),
};

const params = new URLSearchParams(location.search);
// A session token from the site that sent us here (?token=), when the server asks for one.
const TOKEN = params.get('token');
const authHeaders = TOKEN ? { Authorization: `Bearer ${TOKEN}` } : {};
const LOG_CAP = 10000; // keep the test-hook event log bounded on very long sessions

const S = {
  state: 'idle', // idle | connecting | listening | thinking | speaking | barged_in
  starting: false,
  reconnects: 0, // automatic reconnections since the last session started
  reconnectTimer: null,
  running: false, // audio graph is up (mic may still be missing)
  connected: false, // WebSocket open, or LiveKit room joined
  transport: null, // 'websocket' | 'livekit'
  ws: null,
  room: null, // LiveKit Room
  remote: [], // LiveKit: the agent's audio element and its meter
  jitterBufferTarget: null, // LiveKit: the playout delay asked of the browser, ms
  ctx: null,
  forcedRate: false, // ctx was created with sampleRate 48000
  mic: null,
  micSource: null,
  captureNode: null,
  playbackNode: null,
  sink: null,
  sessionId: null,
  model: null,
  paused: false,
  log: [],
  sent: [], // the messages this page sent, for the same tests
  framesReceived: 0,
  framesSent: 0,
  framesPlayed: 0,
  framesPlayedBase: 0, // frames played by earlier (torn-down) playback nodes
  bufferedMs: 0,
  dropped: 0,
  metrics: {},
  turn: null, // the last turn's breakdown: where its voice-to-voice time went
  replyAudioMs: null,
  finalAt: null, // performance.now() of the last final user input still awaiting reply audio
  models: [],
  defaultModel: null,
  userBubble: null, // open (partial) user transcript bubble
  botBubble: null, // open (streaming) bot reply bubble
  cutBubble: null, // bot bubble closed by a barge-in, until the next user turn
  pendingTyped: null, // {text, at}: typed input, to skip a server echo of it
};

// ---------------------------------------------------------------- UI helpers

const STATE_LABELS = {
  idle: 'Idle',
  connecting: 'Connecting…',
  listening: 'Listening',
  thinking: 'Thinking…',
  speaking: 'Speaking',
  barged_in: 'Barged in',
};

function setState(state) {
  S.state = String(state);
  ui.stateBadge.dataset.state = S.state;
  ui.stateText.textContent = STATE_LABELS[S.state] || S.state;
  ui.interruptBtn.classList.toggle('hot', S.state === 'speaking');
}

function setConn(conn) {
  ui.conn.dataset.conn = conn;
  const via = S.transport === 'livekit' ? 'WebRTC' : 'WebSocket';
  ui.conn.textContent = conn === 'offline' ? conn : `${conn} · ${via}`;
}

function updateControls() {
  const btn = ui.startBtn;
  btn.disabled = S.starting;
  btn.dataset.running = String(S.running);
  if (S.starting) btn.textContent = 'Starting…';
  else if (S.running) btn.textContent = 'Stop';
  else btn.textContent = btn.dataset.reconnect === 'true' ? 'Reconnect' : 'Start';
  ui.interruptBtn.disabled = !S.connected;
  ui.pauseBtn.disabled = !S.connected;
  ui.pauseBtn.textContent = S.paused ? 'Resume' : 'Pause';
  ui.pauseBtn.dataset.paused = String(S.paused);
  ui.textInput.disabled = !S.connected;
  ui.sendBtn.disabled = !S.connected;
}

// Only follow new messages if the user has not scrolled up to read history.
function scrollLog(force) {
  const el = ui.log;
  const nearBottom = el.scrollHeight - el.scrollTop - el.clientHeight < 80;
  if (force || nearBottom) el.scrollTop = el.scrollHeight;
}

function addBubble(kind, text, extraClass) {
  const empty = ui.log.querySelector('.empty');
  if (empty) empty.remove();
  const el = document.createElement('div');
  el.className = `msg ${kind}${extraClass ? ' ' + extraClass : ''}`;
  if (kind === 'user' || kind === 'bot') {
    const who = document.createElement('span');
    who.className = 'who';
    who.textContent = kind === 'user' ? 'You' : 'Bot';
    el.append(who);
  }
  const t = document.createElement('span');
  t.className = 'text';
  t.textContent = text; // textContent: server text is never parsed as HTML
  el.append(t);
  const stick = ui.log.scrollHeight - ui.log.scrollTop - ui.log.clientHeight < 80;
  ui.log.append(el);
  scrollLog(stick);
  return el;
}

function setBubbleText(el, text) {
  el.querySelector('.text').textContent = text;
  scrollLog(false);
}

function sysMsg(text, level) {
  // level: undefined (info) | 'warn' | 'error'
  return addBubble(level === 'error' ? 'error' : 'system', text, level === 'warn' ? 'warn' : '');
}

function closeBotBubble(interrupted) {
  const b = S.botBubble;
  if (!b) return;
  b.classList.remove('streaming');
  if (interrupted) {
    b.classList.add('interrupted');
    S.cutBubble = b; // late reply text for this turn updates it, not a new bubble
  }
  S.botBubble = null;
}

// A new user turn starts: close the bot turn for good.
function beginUserTurn() {
  closeBotBubble(false);
  S.cutBubble = null;
}

function fmtMs(v) {
  if (typeof v !== 'number' || !Number.isFinite(v)) return String(v);
  return v >= 1000 ? `${(v / 1000).toFixed(2)} s` : `${Math.round(v)} ms`;
}

const METRIC_LABELS = {
  voice_to_voice_ms: 'Voice → voice',
  asr_ms: 'ASR',
  first_audio_ms: 'First audio',
  barge_in_ms: 'Barge-in',
  barge_in_event_ms: 'Barge-in (onset → pause)',
  llm_ms: 'LLM',
  tts_ms: 'TTS',
};

function metricLabel(key) {
  if (METRIC_LABELS[key]) return METRIC_LABELS[key];
  const base = key.replace(/_ms$/, '').replace(/_/g, ' ');
  return base.charAt(0).toUpperCase() + base.slice(1);
}

function renderMetrics() {
  const dl = ui.metrics;
  dl.textContent = '';
  const row = (label, value, cls) => {
    const dt = document.createElement('dt');
    const dd = document.createElement('dd');
    dt.textContent = label;
    dd.textContent = value;
    if (cls) dt.className = dd.className = cls;
    dl.append(dt, dd);
  };
  row('Reply audio started (browser)', S.replyAudioMs == null ? '—' : fmtMs(S.replyAudioMs), 'browser');
  for (const [k, v] of Object.entries(S.metrics)) {
    row(metricLabel(k), typeof v === 'number' && /_ms$/.test(k) ? fmtMs(v) : String(v));
  }
}

// A turn's stages, back to back from the end of the user's speech to the first reply frame
// handed to the transport: their sum is the voice-to-voice time.
const TURN_STAGES = [
  ['end_of_turn_ms', 'End of turn', 'eot'],
  ['responder_ms', 'Responder → first token', 'llm'],
  ['tts_ms', 'TTS → first frame', 'tts'],
  ['transport_ms', 'Out to the transport', 'out'],
];

function renderTurn() {
  const el = ui.turn;
  const t = S.turn;
  el.textContent = '';
  el.hidden = !t;
  if (!t) return;
  const stages = TURN_STAGES.filter(([k]) => typeof t[k] === 'number');
  const total = stages.reduce((sum, [k]) => sum + t[k], 0);
  const title = document.createElement('h3');
  title.textContent = `Last turn · ${fmtMs(total)}`;
  const bar = document.createElement('div');
  bar.className = 'turn-bar';
  bar.setAttribute('role', 'img');
  bar.setAttribute('aria-label', stages.map(([k, label]) => `${label} ${fmtMs(t[k])}`).join(', '));
  const list = document.createElement('dl');
  list.className = 'metrics turn-stages';
  for (const [k, label, cls] of stages) {
    const seg = document.createElement('span');
    seg.className = `seg ${cls}`;
    seg.style.flexGrow = String(Math.max(t[k], total / 100));
    seg.title = `${label}: ${fmtMs(t[k])}`;
    bar.append(seg);
    const dt = document.createElement('dt');
    const dd = document.createElement('dd');
    const swatch = document.createElement('i');
    swatch.className = `swatch ${cls}`;
    dt.append(swatch, label);
    dd.textContent = fmtMs(t[k]);
    list.append(dt, dd);
  }
  if (typeof t.asr_ms === 'number') {
    const dt = document.createElement('dt');
    const dd = document.createElement('dd');
    dt.className = dd.className = 'sub';
    dt.textContent = 'ASR (within the end of turn)';
    dd.textContent = fmtMs(t.asr_ms);
    list.append(dt, dd);
  }
  el.append(title, bar, list);
  if (t.trace_id) {
    const trace = document.createElement('div');
    trace.className = 'turn-trace';
    trace.textContent = `trace ${t.trace_id}`;
    el.append(trace);
  }
}

function renderStats() {
  const rate = S.ctx ? `${S.ctx.sampleRate} Hz` : '—';
  ui.stats.textContent =
    `rx ${S.framesReceived} · played ${S.framesPlayed} · sent ${S.framesSent} frames\n` +
    `buffer ${Math.round(S.bufferedMs)} ms · audio ${rate}` +
    (S.dropped ? ` · dropped ${S.dropped}` : '');
  ui.stats.style.whiteSpace = 'pre-line';
}

// ---------------------------------------------------------------- models

async function loadModels() {
  try {
    const r = await fetch('/api/models', { cache: 'no-store', headers: authHeaders });
    if (r.status === 401) {
      throw new Error('this server asks for a session token: open the page with the link (…?token=…) your site gave you');
    }
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const data = await r.json();
    S.models = Array.isArray(data.models) ? data.models : [];
    S.defaultModel = data.default_model ?? (S.models[0] && S.models[0].model_id) ?? null;
  } catch (err) {
    S.models = [];
    sysMsg(`Could not load the model list (${err.message}); the server default will be used.`, 'warn');
  }
  fillModels();
}

function findModel(id) {
  return S.models.find((m) => m.model_id === id) || null;
}

function option(value, label) {
  const o = document.createElement('option');
  o.value = value;
  o.textContent = label;
  return o;
}

function fillModels() {
  const sel = ui.modelSel;
  sel.textContent = '';
  if (S.models.length === 0) {
    sel.append(option('', 'Server default'));
  } else {
    for (const m of S.models) {
      const bits = [m.family, m.resident === false ? 'loads on demand' : null].filter(Boolean);
      sel.append(option(m.model_id, bits.length ? `${m.model_id} — ${bits.join(', ')}` : m.model_id));
    }
    const wanted = params.get('model');
    sel.value = findModel(wanted) ? wanted : findModel(S.defaultModel) ? S.defaultModel : S.models[0].model_id;
  }
  fillVoiceAndLanguage();
}

function fillVoiceAndLanguage() {
  const m = findModel(ui.modelSel.value);
  const voices = (m && Array.isArray(m.voices) && m.voices) || [];
  ui.voiceSel.textContent = '';
  ui.voiceField.hidden = voices.length === 0;
  if (voices.length) {
    ui.voiceSel.append(option('', m.default_voice ? `Default (${m.default_voice})` : 'Default'));
    for (const v of voices) ui.voiceSel.append(option(v, v));
    const wanted = params.get('voice');
    ui.voiceSel.value = voices.includes(wanted) ? wanted : '';
  }
  const langs = (m && Array.isArray(m.languages) && m.languages) || [];
  ui.langSel.textContent = '';
  for (const l of langs) ui.langSel.append(option(l, l));
  ui.langField.hidden = langs.length < 2; // nothing to choose with one language
  if (langs.length) {
    const wanted = params.get('lang');
    ui.langSel.value = langs.includes(wanted) ? wanted : langs[0];
  }
}

function sessionStartMessage() {
  const msg = { type: 'session.start', sample_rate: S.ctx.sampleRate };
  if (ui.modelSel.value) msg.model = ui.modelSel.value;
  msg.voice = ui.voiceSel.value || null;
  if (ui.langSel.value) msg.language = ui.langSel.value;
  return msg;
}

// ---------------------------------------------------------------- audio

function newContext(force48k) {
  // 48 kHz matches the server's reply audio, so the player needs no resampling.
  if (force48k) {
    try {
      S.forcedRate = true;
      return new AudioContext({ sampleRate: 48000, latencyHint: 'interactive' });
    } catch {
      /* browser refused the rate: fall through to its native rate */
    }
  }
  S.forcedRate = false;
  return new AudioContext({ latencyHint: 'interactive' });
}

async function getMic() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    sysMsg('Microphone API unavailable (the page needs https or localhost) — you can still type.', 'warn');
    return null;
  }
  try {
    return await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
    });
  } catch (err) {
    sysMsg(`Microphone unavailable (${err.name || err.message}) — you can still type.`, 'warn');
    return null;
  }
}

// resume() never settles without a user gesture in some browsers; don't hang on it.
async function resumeContext(ctx) {
  await Promise.race([ctx.resume().catch(() => {}), new Promise((r) => setTimeout(r, 1500))]);
  if (ctx.state !== 'running') throw new Error('audio is blocked by the browser until you click Start');
}

async function buildGraph() {
  const ctx = S.ctx;
  await ctx.audioWorklet.addModule(new URL('./capture-worklet.js', import.meta.url));
  await ctx.audioWorklet.addModule(new URL('./playback-worklet.js', import.meta.url));

  // Create the mic source first: in Firefox it throws NotSupportedError when the mic
  // rate differs from a forced 48 kHz context, and we retry before building anything.
  const micSource = S.mic ? ctx.createMediaStreamSource(S.mic) : null;

  const playback = new AudioWorkletNode(ctx, 'playback-processor', {
    numberOfInputs: 0,
    numberOfOutputs: 1,
    outputChannelCount: [1],
    processorOptions: { bufferSeconds: 10 },
  });
  playback.port.onmessage = (e) => onPlaybackMessage(e.data);
  playback.connect(ctx.destination); // must reach destination or Chromium never renders it
  S.playbackNode = playback;

  if (micSource) {
    const capture = new AudioWorkletNode(ctx, 'capture-processor', {
      numberOfInputs: 1,
      numberOfOutputs: 1,
      channelCount: 1,
      channelCountMode: 'explicit', // graph down-mixes to mono for us
    });
    capture.port.onmessage = (e) => onCaptureChunk(e.data);
    // A muted sink keeps the capture node in the rendered graph without echoing the mic.
    const sink = ctx.createGain();
    sink.gain.value = 0;
    micSource.connect(capture);
    capture.connect(sink);
    sink.connect(ctx.destination);
    S.micSource = micSource;
    S.captureNode = capture;
    S.sink = sink;
  }
}

async function startAudio() {
  S.ctx = newContext(true); // synchronously, inside the click's user activation
  const micPromise = getMic();
  await resumeContext(S.ctx);
  S.mic = await micPromise;
  try {
    await buildGraph();
  } catch (err) {
    if (!(err && err.name === 'NotSupportedError' && S.forcedRate)) throw err;
    // Mic and context rates differ (Firefox): rebuild at the native rate; the
    // playback worklet then resamples 48 kHz linearly.
    await S.ctx.close().catch(() => {});
    S.ctx = newContext(false);
    await resumeContext(S.ctx);
    await buildGraph();
  }
}

function onCaptureChunk(data) {
  if (!data || !data.pcm) return;
  ui.micLevel.style.width = `${Math.min(100, Math.round(Math.sqrt(data.peak || 0) * 100))}%`;
  if (S.transport !== 'websocket') return; // LiveKit carries the mic track itself
  const ws = S.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN) return;
  // If the socket is backed up (>~1 s of audio), drop: stale speech is worse than a gap.
  if (ws.bufferedAmount > 2 * S.ctx.sampleRate) return;
  ws.send(data.pcm);
  S.framesSent++;
}

function onPlaybackMessage(m) {
  if (!m) return;
  // Over LiveKit the worklet plays nothing; the agent's track is metered in playRemote.
  if (typeof m.framesPlayed === 'number' && S.transport === 'websocket') {
    S.framesPlayed = S.framesPlayedBase + m.framesPlayed;
  }
  if (typeof m.bufferedMs === 'number') S.bufferedMs = m.bufferedMs;
  if (typeof m.dropped === 'number') S.dropped = m.dropped;
  if (m.type === 'started' && S.finalAt != null) {
    // Browser-side latency: final user input → first reply sample rendered.
    S.replyAudioMs = performance.now() - S.finalAt;
    S.finalAt = null;
    renderMetrics();
  }
  renderStats();
}

function playback(cmd) {
  if (S.playbackNode) S.playbackNode.port.postMessage({ cmd });
}

// ---------------------------------------------------------------- transports

async function connect() {
  const wanted = params.get('transport');
  if (wanted !== 'ws' && wanted !== 'websocket') {
    try {
      if (await joinRoom()) return;
    } catch (err) {
      leaveRoom();
      sysMsg(`WebRTC unavailable (${err && err.message ? err.message : err}); using the WebSocket.`, 'warn');
    }
  }
  S.transport = 'websocket';
  openSocket();
}

// ---------------------------------------------------------------- LiveKit

// Joins a room with a token from the orchestrator; false when it hands out none (404).
async function joinRoom() {
  const body = { model: ui.modelSel.value || null, voice: ui.voiceSel.value || null };
  const r = await fetch('/api/livekit/token', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...authHeaders },
    body: JSON.stringify(body),
  });
  if (r.status === 404) return false;
  const grant = await r.json();
  if (!r.ok) throw new Error(grant?.error?.message || `token: HTTP ${r.status}`);

  const { Room, RoomEvent, Track } = await import('./vendor/livekit-client.mjs');
  const room = new Room({ adaptiveStream: false, dynacast: false });
  S.room = room;
  S.transport = 'livekit';
  S.sessionId = null;
  setConn('connecting');
  room.on(RoomEvent.DataReceived, (payload, _participant, _kind, topic) => {
    if (room !== S.room || topic !== 'duplex') return;
    onJson(new TextDecoder().decode(payload));
  });
  room.on(RoomEvent.TrackSubscribed, (track) => {
    if (room === S.room && track.kind === Track.Kind.Audio) playRemote(track);
  });
  let joined = false; // until then a failure rejects connect() and connect() falls back
  room.on(RoomEvent.Disconnected, () => {
    if (room !== S.room || !joined) return;
    S.room = null;
    S.connected = false;
    sysMsg('Left the room.', 'warn');
    ui.startBtn.dataset.reconnect = 'true';
    teardown();
  });
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
  if (S.mic) {
    const [mic] = S.mic.getAudioTracks();
    await room.localParticipant.publishTrack(mic, { source: Track.Source.Microphone, name: 'microphone' });
  }
  joined = true;
  S.connected = true;
  setConn('connected');
  updateControls();
  return true;
}

// The agent's track plays through an audio element; what arrives is metered from the
// receiver's statistics: every 20 ms with sound counts as a frame played, as on the
// WebSocket.
function playRemote(track) {
  // The smallest playout delay the browser allows: the agent already paces the reply at real
  // time, and what the jitter buffer holds is heard after a barge-in has silenced the agent.
  const receiver = track.receiver;
  if (receiver && 'jitterBufferTarget' in receiver) receiver.jitterBufferTarget = 0;
  else if (receiver && 'playoutDelayHint' in receiver) receiver.playoutDelayHint = 0;
  S.jitterBufferTarget = receiver?.jitterBufferTarget ?? null;
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
        S.framesReceived += frames;
        // A level above about -40 dBFS: speech, not silence or comfort noise.
        if (frames > 0 && (v.audioLevel || 0) > 0.01) {
          if (S.finalAt != null) onPlaybackMessage({ type: 'started' });
          S.framesPlayed += frames;
        }
        renderStats();
      }
      last = v;
    });
  }, 100);
  S.remote.push(el, { stop: () => clearInterval(timer) });
}

function leaveRoom() {
  const room = S.room;
  S.room = null;
  for (const item of S.remote) {
    if (item instanceof HTMLMediaElement) item.remove();
    else item.stop();
  }
  S.remote = [];
  if (room) room.disconnect().catch(() => {});
}

// ---------------------------------------------------------------- WebSocket

// Close codes after which the page reconnects by itself: going away (a server restart),
// abnormal closure (the connection dropped), internal error, service restart.
const RECONNECT_CODES = new Set([1001, 1006, 1011, 1012]);

function openSocket() {
  const query = TOKEN ? `?token=${encodeURIComponent(TOKEN)}` : '';
  const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws${query}`;
  const ws = new WebSocket(url);
  ws.binaryType = 'arraybuffer';
  S.ws = ws;
  S.sessionId = null;
  setConn('connecting');
  // Each handler ignores events from a socket that was replaced (model switch, stop).
  ws.onopen = () => {
    if (ws !== S.ws) return;
    ws.send(JSON.stringify(noteSent(sessionStartMessage()))); // must be the first message
    S.connected = true;
    setConn('connected');
    updateControls();
  };
  ws.onmessage = (ev) => {
    if (ws !== S.ws) return;
    if (typeof ev.data === 'string') onJson(ev.data);
    else onAudio(ev.data);
  };
  ws.onerror = () => {
    /* details arrive with the close event */
  };
  ws.onclose = (ev) => {
    if (ws !== S.ws) return;
    S.ws = null;
    S.connected = false;
    if (ev.code === 1013) {
      // Try Again Later: every TTS slot is taken; the error event before it said so too.
      sysMsg('The service is busy right now: every voice is in use. Press Start to try again in a moment.', 'warn');
    } else if (RECONNECT_CODES.has(ev.code)) {
      // The server went away (a restart, a network blip): come back on our own.
      const delay = Math.min(10000, 1000 * 2 ** S.reconnects);
      S.reconnects += 1;
      sysMsg(`Connection lost (code ${ev.code}); reconnecting in ${Math.round(delay / 1000)} s…`, 'warn');
      S.reconnectTimer = setTimeout(() => {
        S.reconnectTimer = null;
        start();
      }, delay);
    } else {
      const why = ev.reason ? `: ${ev.reason}` : '';
      sysMsg(`Connection closed (code ${ev.code}${why}).`, ev.code === 1000 ? undefined : 'warn');
    }
    ui.startBtn.dataset.reconnect = 'true';
    teardown();
  };
}

function onAudio(buf) {
  S.framesReceived++;
  // int16 needs an even byte count; drop a stray trailing byte rather than throw.
  if (buf.byteLength & 1) buf = buf.slice(0, buf.byteLength - 1);
  if (S.playbackNode) S.playbackNode.port.postMessage({ cmd: 'push', pcm: buf }, [buf]);
  if (S.framesReceived % 10 === 0) renderStats();
}

function onJson(text) {
  let msg;
  try {
    msg = JSON.parse(text);
  } catch {
    sysMsg('Received a malformed message from the server.', 'warn');
    return;
  }
  if (!msg || typeof msg !== 'object') return;
  S.log.push(msg);
  if (S.log.length > LOG_CAP) S.log.splice(0, S.log.length - LOG_CAP);

  switch (msg.type) {
    case 'session.started':
      S.reconnects = 0;
      S.sessionId = msg.session_id ?? null;
      S.model = msg.model ?? null;
      // Reflect the server's choice (e.g. its default) without triggering a restart.
      if (S.model && findModel(S.model) && ui.modelSel.value !== S.model) {
        ui.modelSel.value = S.model;
        fillVoiceAndLanguage();
      }
      ui.sessionInfo.textContent = `session ${S.sessionId ?? '?'} · ${S.model ?? 'default model'}`;
      break;
    case 'state':
      setState(msg.state);
      break;
    case 'transcript':
      onTranscript(msg);
      break;
    case 'reply':
      onReply(msg);
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
      // Resumed after a barge-in that turned out false: the cut reply continues.
      if (msg.action === 'resume' && !S.botBubble && S.cutBubble) {
        S.botBubble = S.cutBubble;
        S.cutBubble = null;
        S.botBubble.classList.remove('interrupted');
        S.botBubble.classList.add('streaming');
      }
      break;
    case 'metrics': {
      // Accept both flat {type, key: n} and nested {type, metrics:{...}} shapes.
      const src = msg.metrics && typeof msg.metrics === 'object' ? msg.metrics : msg;
      for (const [k, v] of Object.entries(src)) {
        if (k === 'type') continue;
        if (v === null || typeof v === 'object') continue;
        S.metrics[k] = v;
      }
      if (msg.turn && typeof msg.turn === 'object') {
        S.turn = msg.turn;
        renderTurn();
      }
      renderMetrics();
      break;
    }
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

function onTranscript(msg) {
  const text = typeof msg.text === 'string' ? msg.text : '';
  const final = !!msg.final;
  // Skip the server echoing typed input back as a transcript.
  const typed = S.pendingTyped;
  if (!S.userBubble && typed && text.trim() === typed.text && performance.now() - typed.at < 10000) {
    if (final) S.pendingTyped = null;
    return;
  }
  if (!S.userBubble) {
    if (!text.trim()) return; // nothing to show yet
    beginUserTurn();
    S.userBubble = addBubble('user', text, 'partial');
  } else {
    setBubbleText(S.userBubble, text);
  }
  if (final) {
    const el = S.userBubble;
    S.userBubble = null;
    if (!text.trim()) {
      el.remove(); // empty final: the partial was noise
      return;
    }
    el.classList.remove('partial');
    S.finalAt = performance.now();
  } else {
    S.userBubble.classList.add('partial');
  }
}

function onReply(msg) {
  const text = typeof msg.text === 'string' ? msg.text : '';
  if (!S.botBubble && S.cutBubble) {
    // Reply text for a turn the user already cut off: keep it in that bubble.
    if (text) setBubbleText(S.cutBubble, text);
    if (msg.final) S.cutBubble = null;
    return;
  }
  if (!S.botBubble) {
    if (!text) return; // e.g. a bare end-of-turn marker
    S.botBubble = addBubble('bot', text, 'streaming');
  } else if (text) {
    setBubbleText(S.botBubble, text); // replies carry the growing full text
  }
  if (msg.final) closeBotBubble(false);
}

function noteSent(obj) {
  S.sent.push(obj);
  if (S.sent.length > LOG_CAP) S.sent.splice(0, S.sent.length - LOG_CAP);
  return obj;
}

function sendJson(obj) {
  noteSent(obj);
  if (S.transport === 'livekit') {
    if (!S.room || !S.connected) return false;
    const data = new TextEncoder().encode(JSON.stringify(obj));
    S.room.localParticipant.publishData(data, { reliable: true, topic: 'duplex' }).catch((err) => {
      sysMsg(`Could not send: ${err && err.message ? err.message : err}`, 'warn');
    });
    return true;
  }
  const ws = S.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN) return false;
  ws.send(JSON.stringify(obj));
  return true;
}

// ---------------------------------------------------------------- actions

async function start() {
  if (S.running || S.starting) return;
  S.starting = true;
  delete ui.startBtn.dataset.reconnect;
  setState('connecting');
  updateControls();
  try {
    await startAudio();
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
  leaveRoom();
  const ws = S.ws;
  S.ws = null; // detach first so its close event is ignored
  if (ws) {
    try {
      ws.close(1000, 'client stop');
    } catch {
      /* already closing */
    }
  }
  const wasRunning = S.running;
  await teardown();
  delete ui.startBtn.dataset.reconnect;
  updateControls();
  if (wasRunning) sysMsg('Stopped.');
}

// Releases everything (mic, audio graph, socket state); safe to call repeatedly.
async function teardown() {
  S.connected = false;
  S.running = false;
  S.paused = false;
  S.framesPlayedBase = S.framesPlayed;
  if (S.captureNode) {
    S.captureNode.port.postMessage({ cmd: 'stop' });
    S.captureNode.port.onmessage = null;
  }
  if (S.playbackNode) S.playbackNode.port.onmessage = null;
  for (const node of [S.micSource, S.captureNode, S.sink, S.playbackNode]) {
    if (node) {
      try {
        node.disconnect();
      } catch {
        /* not connected */
      }
    }
  }
  if (S.mic) for (const t of S.mic.getTracks()) t.stop();
  leaveRoom();
  const ctx = S.ctx;
  S.micSource = S.captureNode = S.sink = S.playbackNode = S.mic = null;
  S.ctx = null;
  S.bufferedMs = 0;
  S.finalAt = null;
  if (S.userBubble) {
    S.userBubble.classList.remove('partial');
    S.userBubble = null;
  }
  beginUserTurn();
  ui.micLevel.style.width = '0';
  setState('idle');
  setConn('offline');
  updateControls();
  renderStats();
  if (ctx && ctx.state !== 'closed') await ctx.close().catch(() => {});
}

// Switch model/voice/language mid-call: new WebSocket session, same audio graph.
function restartSession() {
  if (!S.running) return;
  if (S.transport === 'livekit') {
    // The agent replaces its session in place; the room and the tracks stay.
    S.paused = false;
    S.finalAt = null;
    closeBotBubble(true);
    S.cutBubble = null;
    sysMsg(`Switching to ${ui.modelSel.value || 'default model'}${ui.voiceSel.value ? ` / ${ui.voiceSel.value}` : ''}…`);
    sendJson(sessionStartMessage());
    return;
  }
  const old = S.ws;
  S.ws = null;
  if (old) {
    try {
      old.close(1000, 'session restart');
    } catch {
      /* ignore */
    }
  }
  S.connected = false;
  S.paused = false;
  S.finalAt = null;
  playback('flush');
  playback('resume');
  closeBotBubble(true);
  S.cutBubble = null; // the new session's replies never belong to the old turn
  sysMsg(`Switching to ${ui.modelSel.value || 'default model'}${ui.voiceSel.value ? ` / ${ui.voiceSel.value}` : ''}…`);
  setState('connecting');
  updateControls();
  openSocket();
}

function sendText(t) {
  const text = String(t ?? '').trim();
  if (!text) return false;
  if (!sendJson({ type: 'text', text })) {
    sysMsg('Not connected — press Start first.', 'warn');
    return false;
  }
  if (S.userBubble) {
    S.userBubble.classList.remove('partial');
    S.userBubble = null;
  }
  beginUserTurn();
  addBubble('user', text, 'typed');
  S.pendingTyped = { text, at: performance.now() };
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
  get framesPlayed() { return S.framesPlayed; },
  get framesReceived() { return S.framesReceived; },
  get framesSent() { return S.framesSent; },
  get connected() { return S.connected; },
  get transport() { return S.transport; },
  get jitterBufferTarget() { return S.jitterBufferTarget; },
  get room() { return S.room; },
  get running() { return S.running; },
  get sessionId() { return S.sessionId; },
  get model() { return S.model; },
  get sampleRate() { return S.ctx ? S.ctx.sampleRate : null; },
  get bufferedMs() { return S.bufferedMs; },
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
