// ui.js — the page's elements: the state badge, the conversation log, the latency panel and
// the model pickers. Owns the bubbles of the conversation (which one is open, which one a
// barge-in cut); knows nothing of transports or audio.

const $ = (id) => document.getElementById(id);
export const ui = {
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

const STATE_LABELS = {
  idle: 'Idle',
  connecting: 'Connecting…',
  listening: 'Listening',
  thinking: 'Thinking…',
  speaking: 'Speaking',
  barged_in: 'Barged in',
};

export function showState(state) {
  ui.stateBadge.dataset.state = state;
  ui.stateText.textContent = STATE_LABELS[state] || state;
  ui.interruptBtn.classList.toggle('hot', state === 'speaking');
}

export function showConnection(conn, transport) {
  ui.conn.dataset.conn = conn;
  const via = transport === 'livekit' ? 'WebRTC' : 'WebSocket';
  ui.conn.textContent = conn === 'offline' ? conn : `${conn} · ${via}`;
}

export function showControls({ starting, running, connected, paused }) {
  const btn = ui.startBtn;
  btn.disabled = starting;
  btn.dataset.running = String(running);
  if (starting) btn.textContent = 'Starting…';
  else if (running) btn.textContent = 'Stop';
  else btn.textContent = btn.dataset.reconnect === 'true' ? 'Reconnect' : 'Start';
  ui.interruptBtn.disabled = !connected;
  ui.pauseBtn.disabled = !connected;
  ui.pauseBtn.textContent = paused ? 'Resume' : 'Pause';
  ui.pauseBtn.dataset.paused = String(paused);
  ui.textInput.disabled = !connected;
  ui.sendBtn.disabled = !connected;
}

export function showMicLevel(peak) {
  ui.micLevel.style.width = `${Math.min(100, Math.round(Math.sqrt(peak || 0) * 100))}%`;
}

// ---------------------------------------------------------------- the conversation log

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

export function sysMsg(text, level) {
  // level: undefined (info) | 'warn' | 'error'
  return addBubble(level === 'error' ? 'error' : 'system', text, level === 'warn' ? 'warn' : '');
}

// The open bubbles: the user's partial transcript, the bot's streaming reply, and a reply a
// barge-in cut (late text for that turn goes there, not into a new bubble).
const chat = {
  user: null,
  bot: null,
  cut: null,
  typed: null, // {text, at}: typed input, to skip the server's echo of it
};

export function closeBotBubble(interrupted) {
  const b = chat.bot;
  if (!b) return;
  b.classList.remove('streaming');
  if (interrupted) {
    b.classList.add('interrupted');
    chat.cut = b;
  }
  chat.bot = null;
}

// A new user turn starts: close the bot turn for good.
export function beginUserTurn() {
  closeBotBubble(false);
  chat.cut = null;
}

// Resumed after a barge-in that turned out false: the cut reply continues.
export function reopenCutReply() {
  if (chat.bot || !chat.cut) return;
  chat.bot = chat.cut;
  chat.cut = null;
  chat.bot.classList.remove('interrupted');
  chat.bot.classList.add('streaming');
}

// The session is replaced: its replies never belong to the old turn.
export function forgetCutReply() {
  closeBotBubble(true);
  chat.cut = null;
}

// Returns true when the transcript completes a spoken turn (the reply's latency counts from
// there).
export function showTranscript(text, final) {
  const typed = chat.typed;
  if (!chat.user && typed && text.trim() === typed.text && performance.now() - typed.at < 10000) {
    if (final) chat.typed = null;
    return false;
  }
  if (!chat.user) {
    if (!text.trim()) return false; // nothing to show yet
    beginUserTurn();
    chat.user = addBubble('user', text, 'partial');
  } else {
    setBubbleText(chat.user, text);
  }
  if (!final) {
    chat.user.classList.add('partial');
    return false;
  }
  const el = chat.user;
  chat.user = null;
  if (!text.trim()) {
    el.remove(); // empty final: the partial was noise
    return false;
  }
  el.classList.remove('partial');
  return true;
}

export function showReply(text, final) {
  if (!chat.bot && chat.cut) {
    // Reply text for a turn the user already cut off: keep it in that bubble.
    if (text) setBubbleText(chat.cut, text);
    if (final) chat.cut = null;
    return;
  }
  if (!chat.bot) {
    if (!text) return; // e.g. a bare end-of-turn marker
    chat.bot = addBubble('bot', text, 'streaming');
  } else if (text) {
    setBubbleText(chat.bot, text); // replies carry the growing full text
  }
  if (final) closeBotBubble(false);
}

export function showTyped(text) {
  closeUserBubble();
  beginUserTurn();
  addBubble('user', text, 'typed');
  chat.typed = { text, at: performance.now() };
}

export function closeUserBubble() {
  if (!chat.user) return;
  chat.user.classList.remove('partial');
  chat.user = null;
}

// ---------------------------------------------------------------- latency

export function fmtMs(v) {
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

export function showMetrics(metrics, replyAudioMs) {
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
  row('Reply audio started (browser)', replyAudioMs == null ? '—' : fmtMs(replyAudioMs), 'browser');
  for (const [k, v] of Object.entries(metrics)) {
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

export function showTurn(t) {
  const el = ui.turn;
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

export function showStats({ received, played, sent, bufferedMs, sampleRate, dropped }) {
  const rate = sampleRate ? `${sampleRate} Hz` : '—';
  ui.stats.textContent =
    `rx ${received} · played ${played} · sent ${sent} frames\n` +
    `buffer ${Math.round(bufferedMs)} ms · audio ${rate}` +
    (dropped ? ` · dropped ${dropped}` : '');
  ui.stats.style.whiteSpace = 'pre-line';
}

// ---------------------------------------------------------------- models

const params = new URLSearchParams(location.search);
const models = { list: [], defaultModel: null };

function option(value, label) {
  const o = document.createElement('option');
  o.value = value;
  o.textContent = label;
  return o;
}

export function findModel(id) {
  return models.list.find((m) => m.model_id === id) || null;
}

export function showModels(list, defaultModel) {
  models.list = list;
  models.defaultModel = defaultModel;
  const sel = ui.modelSel;
  sel.textContent = '';
  if (list.length === 0) {
    sel.append(option('', 'Server default'));
  } else {
    for (const m of list) {
      const bits = [m.family, m.resident === false ? 'loads on demand' : null].filter(Boolean);
      sel.append(option(m.model_id, bits.length ? `${m.model_id} — ${bits.join(', ')}` : m.model_id));
    }
    const wanted = params.get('model');
    sel.value = findModel(wanted) ? wanted : findModel(defaultModel) ? defaultModel : list[0].model_id;
  }
  fillVoiceAndLanguage();
}

export function fillVoiceAndLanguage() {
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

// The server chose a model (e.g. its default): show it without triggering a restart.
export function showSession(sessionId, model) {
  if (model && findModel(model) && ui.modelSel.value !== model) {
    ui.modelSel.value = model;
    fillVoiceAndLanguage();
  }
  ui.sessionInfo.textContent = `session ${sessionId ?? '?'} · ${model ?? 'default model'}`;
}

// What the user picked: model, voice and language (null when the server's default).
export function choice() {
  return {
    model: ui.modelSel.value || null,
    voice: ui.voiceSel.value || null,
    language: ui.langSel.value || null,
  };
}
