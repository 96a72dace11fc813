// The console's behaviour: every action is a call to the gateway's HTTP API (docs/API.md) with
// the key typed into the page, and every refusal shows the API's own message.

const KEY_ITEM = 'voice-clone-tts.key';
const JOBS_ITEM = 'voice-clone-tts.jobs';
const MAX_JOBS = 25;
const TERMINAL = new Set(['succeeded', 'failed', 'expired']);

// What each format is called when it is a file, and how it plays while it streams: MP3 through
// Media Source Extensions on the <audio> element, WAV and PCM as samples through Web Audio (their
// bodies are samples after a header, or none). Opus in Ogg and FLAC have no decoder the page can
// feed piece by piece: they are asked for whole, which also gives FLAC the length and checksum
// that a streamed one lacks.
const FORMATS = {
  mp3: { mime: 'audio/mpeg', extension: 'mp3', streams: true },
  wav: { mime: 'audio/wav', extension: 'wav', streams: true },
  pcm: { mime: 'audio/pcm', extension: 'pcm', streams: true },
  opus: { mime: 'audio/ogg', extension: 'ogg', streams: false },
  flac: { mime: 'audio/flac', extension: 'flac', streams: false },
};
// The rate of `pcm` answers, fixed by the API.
const PCM_RATE = 24000;

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------------
// The key and the API.

// The key lives in sessionStorage: this tab only, gone when it closes, never in a cookie.
function apiKey() {
  return sessionStorage.getItem(KEY_ITEM) || '';
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// A call to the API with the key; a refusal becomes an ApiError with the body's `error` and
// `message`, so that the page shows what the API said.
async function api(path, { method = 'GET', json, body, accept, signal } = {}) {
  const headers = new Headers();
  const key = apiKey();
  if (key) headers.set('Authorization', `Bearer ${key}`);
  if (accept) headers.set('Accept', accept);
  if (json !== undefined) {
    headers.set('Content-Type', 'application/json');
    body = JSON.stringify(json);
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body, signal, cache: 'no-store' });
  } catch (error) {
    if (error.name === 'AbortError') throw error;
    throw new ApiError(0, '', `The gateway did not answer (${error.message}).`);
  }
  if (!response.ok) throw await refusal(response);
  return response;
}

async function refusal(response) {
  let code = '';
  let message = `The gateway answered ${response.status} ${response.statusText}`.trim() + '.';
  try {
    const body = await response.json();
    if (body && typeof body.error === 'string') {
      code = body.error;
      if (typeof body.message === 'string' && body.message) message = body.message;
    }
  } catch {
    // Not the API's JSON (a proxy's page, say): the status line is all there is.
  }
  return new ApiError(response.status, code, message);
}

// A WebSocket URL for `path` with the key in `access_token` (browsers cannot send headers on a
// WebSocket), percent-encoded as the gateway reads it. Callers still handle null (no socket) by
// polling over plain requests, which carry the key in a header.
function socketUrl(path) {
  const url = new URL(path, window.location.href);
  url.protocol = url.protocol === 'https:' || url.protocol === 'wss:' ? 'wss:' : 'ws:';
  const key = apiKey();
  if (key) {
    url.searchParams.set('access_token', key);
  }
  return url.href;
}

// ---------------------------------------------------------------------------------------------
// Small helpers for the page.

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === 'class') node.className = value;
    else if (name === 'dataset') Object.assign(node.dataset, value);
    else if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? '' : value);
  }
  for (const child of children) {
    if (child !== undefined && child !== null) node.append(child);
  }
  return node;
}

function say(region, text) {
  $(`${region}-status`).textContent = text;
}

function describe(error) {
  if (error instanceof ApiError && error.code) return `${error.message} (${error.code})`;
  return error && error.message ? error.message : String(error);
}

function fail(region, error) {
  $(`${region}-error`).textContent = describe(error);
}

function clearError(region) {
  $(`${region}-error`).textContent = '';
}

function short(id) {
  return id ? id.slice(0, 8) : '?';
}

function percent(progress) {
  return `${Math.round((Number(progress) || 0) * 100)} %`;
}

function count(n, noun) {
  return `${n} ${noun}${n === 1 ? '' : 's'}`;
}

function kilobytes(bytes) {
  return `${(bytes / 1024).toFixed(bytes < 10240 ? 1 : 0)} kB`;
}

const delay = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function saveBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  const link = el('a', { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

// ---------------------------------------------------------------------------------------------
// Voices.

let voices = [];

async function loadVoices() {
  clearError('voices');
  try {
    const body = await (await api('/api/voices')).json();
    voices = body.voices || [];
  } catch (error) {
    voices = [];
    fail('voices', error);
    say('voices', '');
    if (error.status === 401) say('key', 'This gateway needs an API key: type it above.');
    fillVoiceControls();
    renderVoices();
    return false;
  }
  const cloned = voices.filter((v) => v.cloned).length;
  say('voices', `${count(voices.length, 'voice')}: ${voices.length - cloned} stock, ${cloned} cloned.`);
  fillVoiceControls();
  renderVoices();
  return true;
}

function languagesOf(voice) {
  return [voice.language, ...(voice.other_languages || [])].filter(Boolean);
}

function fillSelect(select, options, keep) {
  const previous = keep ?? select.value;
  select.replaceChildren(...options);
  const values = [...select.options].map((o) => o.value);
  if (values.includes(previous)) select.value = previous;
}

function fillVoiceControls() {
  const ready = voices.filter((v) => v.status === 'ready');
  const option = (v) =>
    el('option', { value: v.voice_id }, `${v.name} (${v.language}, ${v.engine})`);
  const groups = [];
  const clones = ready.filter((v) => v.cloned);
  const stock = ready.filter((v) => !v.cloned);
  if (clones.length) groups.push(el('optgroup', { label: 'Cloned voices' }, ...clones.map(option)));
  if (stock.length) groups.push(el('optgroup', { label: 'Stock voices' }, ...stock.map(option)));
  fillSelect($('speak-voice'), groups);
  fillSpeakLanguages();

  const languages = [...new Set(voices.flatMap(languagesOf))].sort();
  const cloneLanguage = $('clone-language');
  fillSelect(
    cloneLanguage,
    languages.map((l) => el('option', { value: l }, l)),
    cloneLanguage.value || 'en',
  );
  const native = [...new Set(voices.map((v) => v.language))].sort();
  fillSelect($('voices-language'), [
    el('option', { value: '' }, 'All languages'),
    ...native.map((l) => el('option', { value: l }, l)),
  ]);
}

function fillSpeakLanguages() {
  const voice = voices.find((v) => v.voice_id === $('speak-voice').value);
  const languages = voice ? languagesOf(voice) : [];
  const select = $('speak-language');
  const keep = languages.includes(select.value) ? select.value : languages[0];
  fillSelect(select, languages.map((l) => el('option', { value: l }, l)), keep);
  const speed = $('speak-speed');
  const range = voice && voice.speed_range;
  speed.min = range ? range.min : 0.25;
  speed.max = range ? range.max : 4;
  $('speak-speed-help').textContent = range
    ? `${range.min} to ${range.max}; 1 is normal`
    : '0.25 to 4; 1 is normal';
}

function similarityText(voice) {
  const s = voice.similarity;
  if (!s || typeof s.cloned !== 'number') return '';
  const best = typeof s.best_stock === 'number' ? `; best stock ${s.best_stock.toFixed(2)}` : '';
  return `${s.cloned.toFixed(2)}${best}`;
}

function renderVoices() {
  const language = $('voices-language').value;
  const kind = $('voices-kind').value;
  const shown = voices.filter(
    (v) =>
      (!language || v.language === language) &&
      (!kind || (kind === 'cloned') === Boolean(v.cloned)),
  );
  const rows = shown.map((v) => {
    const status = v.status === 'failed' && v.error ? `failed: ${v.error.message}` : v.status;
    const actions = el('td');
    if (v.status === 'ready') {
      actions.append(
        el('button', { type: 'button', 'aria-label': `Use voice ${v.name}`, onclick: () => useVoice(v) }, 'Use'),
      );
    }
    if (v.cloned) {
      actions.append(
        el('button', { type: 'button', 'aria-label': `Delete voice ${v.name}`, onclick: () => deleteVoice(v) }, 'Delete'),
      );
    }
    return el(
      'tr',
      { dataset: { voiceId: v.voice_id, name: v.name, status: v.status } },
      el('td', {}, v.name),
      el('td', { class: 'id' }, v.voice_id),
      el('td', {}, v.engine),
      el('td', { title: languagesOf(v).join(', ') }, v.language),
      el('td', {}, v.cloned ? 'cloned' : 'stock'),
      el('td', { class: `state-${v.status}` }, status),
      el('td', {}, similarityText(v)),
      actions,
    );
  });
  if (!rows.length) {
    rows.push(el('tr', {}, el('td', { class: 'empty', colspan: 8 }, 'No voices to show.')));
  }
  $('voices-table').tBodies[0].replaceChildren(...rows);
}

function useVoice(voice) {
  $('speak-voice').value = voice.voice_id;
  fillSpeakLanguages();
  say('speak', `Voice ${voice.name} chosen.`);
  $('speak-text').focus();
}

async function deleteVoice(voice) {
  if (!window.confirm(`Delete the voice "${voice.name}" and its stored files?`)) return;
  clearError('voices');
  try {
    await api(`/api/voices/${encodeURIComponent(voice.voice_id)}`, { method: 'DELETE' });
    say('voices', `Voice ${voice.name} deleted.`);
  } catch (error) {
    fail('voices', error);
  }
  await loadVoices();
}

// ---------------------------------------------------------------------------------------------
// Speaking: a streamed synthesis played while it arrives.

let playback = null;
let audioContext = null;

function sharedAudioContext() {
  if (!audioContext) audioContext = new AudioContext();
  if (audioContext.state === 'suspended') audioContext.resume();
  return audioContext;
}

function startPlaying(player) {
  player.play().catch((error) => {
    if (error.name === 'NotAllowedError') say('speak', 'The browser held the audio back: press play.');
  });
}

// Stops what the last synthesis plays and lets go of its object URLs.
function stopPlayback() {
  if (!playback) return;
  playback.controller.abort();
  for (const node of playback.nodes) {
    try {
      node.stop();
    } catch {
      // Already ended.
    }
  }
  for (const url of playback.urls) URL.revokeObjectURL(url);
  playback = null;
}

// MP3 through Media Source Extensions: the <audio> element plays what has arrived.
function mediaSourceSink(player, mime, urls) {
  const source = new MediaSource();
  const url = URL.createObjectURL(source);
  urls.push(url);
  player.src = url;
  const opened = new Promise((resolve) => source.addEventListener('sourceopen', resolve, { once: true }));
  let buffer = null;
  const appended = () =>
    new Promise((resolve, reject) => {
      buffer.addEventListener('updateend', resolve, { once: true });
      buffer.addEventListener('error', () => reject(new Error('the browser could not decode the audio')), { once: true });
    });
  return {
    async push(bytes) {
      await opened;
      if (!buffer) buffer = source.addSourceBuffer(mime);
      const done = appended();
      buffer.appendBuffer(bytes);
      await done;
      if (player.paused && !player.ended && player.played.length === 0) startPlaying(player);
    },
    async end(file) {
      await opened;
      if (!buffer) {
        player.removeAttribute('src');
        return file;
      }
      if (buffer.updating) await appended();
      if (source.readyState === 'open') source.endOfStream();
      return file;
    },
  };
}

// The sample rate and where the samples start in a WAV stream's first bytes: null while the
// header is incomplete.
function wavHeader(bytes) {
  if (bytes.byteLength < 12) return null;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const tag = (at) => String.fromCharCode(...bytes.subarray(at, at + 4));
  if (tag(0) !== 'RIFF' || tag(8) !== 'WAVE') throw new Error('the answer is not a WAV stream');
  let at = 12;
  let rate = 0;
  while (at + 8 <= bytes.byteLength) {
    const id = tag(at);
    const size = view.getUint32(at + 4, true);
    if (id === 'data') {
      if (!rate) throw new Error('the WAV stream has no format chunk');
      return { rate, dataOffset: at + 8 };
    }
    if (at + 8 + size > bytes.byteLength) return null;
    if (id === 'fmt ') {
      if (view.getUint16(at + 10, true) !== 1 || view.getUint16(at + 22, true) !== 16) {
        throw new Error('the WAV stream is not 16-bit mono');
      }
      rate = view.getUint32(at + 12, true);
    }
    at += 8 + size + (size % 2);
  }
  return null;
}

// A 16-bit mono WAV file of raw little-endian samples.
function wavFile(pcm, rate) {
  const header = new DataView(new ArrayBuffer(44));
  const text = (at, s) => [...s].forEach((c, i) => header.setUint8(at + i, c.charCodeAt(0)));
  text(0, 'RIFF');
  header.setUint32(4, 36 + pcm.byteLength, true);
  text(8, 'WAVE');
  text(12, 'fmt ');
  header.setUint32(16, 16, true);
  header.setUint16(20, 1, true);
  header.setUint16(22, 1, true);
  header.setUint32(24, rate, true);
  header.setUint32(28, rate * 2, true);
  header.setUint16(32, 2, true);
  header.setUint16(34, 16, true);
  text(36, 'data');
  header.setUint32(40, pcm.byteLength, true);
  return new Blob([header.buffer, pcm], { type: 'audio/wav' });
}

// WAV and PCM: the samples are played through Web Audio as they come, each piece scheduled
// right after the one before; once the body is complete, the <audio> element gets the whole
// file, to play again, seek and download.
function samplesSink(player, { wav, urls, nodes }) {
  const context = sharedAudioContext();
  let pending = new Uint8Array(0);
  let rate = wav ? 0 : PCM_RATE;
  let dataOffset = 0;
  let playAt = 0;

  function play(bytes) {
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const samples = new Float32Array(bytes.byteLength / 2);
    for (let i = 0; i < samples.length; i += 1) samples[i] = view.getInt16(2 * i, true) / 32768;
    const buffer = context.createBuffer(1, samples.length, rate);
    buffer.copyToChannel(samples, 0);
    const node = context.createBufferSource();
    node.buffer = buffer;
    node.connect(context.destination);
    const at = Math.max(playAt, context.currentTime + 0.05);
    node.start(at);
    playAt = at + buffer.duration;
    nodes.add(node);
    node.addEventListener('ended', () => nodes.delete(node));
  }

  return {
    async push(bytes) {
      let data = new Uint8Array(pending.byteLength + bytes.byteLength);
      data.set(pending);
      data.set(bytes, pending.byteLength);
      if (!rate) {
        const header = wavHeader(data);
        if (!header) {
          pending = data;
          return;
        }
        ({ rate, dataOffset } = header);
        data = data.subarray(dataOffset);
      }
      const whole = data.byteLength - (data.byteLength % 2);
      pending = data.slice(whole);
      if (whole) play(data.subarray(0, whole));
    },
    async end(file) {
      let playable = file;
      if (wav) {
        // A streamed WAV's header gives no sizes; the complete file gets its real ones.
        const bytes = new Uint8Array(await file.arrayBuffer());
        const view = new DataView(bytes.buffer);
        view.setUint32(4, bytes.byteLength - 8, true);
        if (dataOffset >= 8) view.setUint32(dataOffset - 4, bytes.byteLength - dataOffset, true);
        playable = new Blob([bytes], { type: 'audio/wav' });
      } else {
        playable = wavFile(await file.arrayBuffer(), PCM_RATE);
      }
      const url = URL.createObjectURL(playable);
      urls.push(url);
      player.src = url;
      return wav ? playable : file;
    },
  };
}

// Opus and FLAC: played once the whole file is here.
function wholeFileSink(player, urls) {
  return {
    async push() {},
    async end(file) {
      const url = URL.createObjectURL(file);
      urls.push(url);
      player.src = url;
      startPlaying(player);
      return file;
    },
  };
}

function sinkFor(format, player, state) {
  if (format === 'mp3' && window.MediaSource && MediaSource.isTypeSupported('audio/mpeg')) {
    return mediaSourceSink(player, 'audio/mpeg', state.urls);
  }
  if (format === 'wav' || format === 'pcm') {
    return samplesSink(player, { wav: format === 'wav', urls: state.urls, nodes: state.nodes });
  }
  return wholeFileSink(player, state.urls);
}

async function speak(event) {
  event.preventDefault();
  clearError('speak');
  stopPlayback();
  const player = $('player');
  const download = $('speak-download');
  player.pause();
  player.removeAttribute('src');
  player.load();
  download.hidden = true;
  const state = { controller: new AbortController(), urls: [], nodes: new Set() };
  playback = state;

  const format = $('speak-format').value;
  const streams = FORMATS[format].streams;
  const request = { text: $('speak-text').value, voice_id: $('speak-voice').value, format, stream: streams };
  if ($('speak-language').value) request.language = $('speak-language').value;
  const speed = $('speak-speed').value.trim();
  if (speed !== '') request.speed = Number(speed);

  say('speak', 'Sending the text…');
  let response;
  try {
    response = await api('/api/synthesize', { method: 'POST', json: request, signal: state.controller.signal });
  } catch (error) {
    if (error.name === 'AbortError') return;
    say('speak', '');
    fail('speak', error);
    return;
  }
  const jobId = response.headers.get('X-Job-Id');
  const voice = voices.find((v) => v.voice_id === request.voice_id);
  if (jobId) {
    remember({
      job_id: jobId,
      kind: 'speech',
      voice: voice ? voice.name : request.voice_id,
      format,
      status: 'running',
      progress: 0,
      made: new Date().toISOString(),
    });
  }
  say('speak', streams ? `Job ${short(jobId)}: playing as it is made…` : `Job ${short(jobId)}: receiving the file…`);

  const sink = sinkFor(format, player, state);
  const pieces = [];
  let received = 0;
  try {
    const reader = response.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      pieces.push(value);
      received += value.byteLength;
      await sink.push(value);
    }
  } catch (error) {
    if (playback !== state) return;
    say('speak', '');
    fail('speak', new Error(
      `The audio stream ended early (${error.message}). The job goes on; its whole audio is in Recent jobs once it ends.`,
    ));
    if (jobId) refreshJob(jobId).catch(() => {});
    return;
  }
  if (playback !== state) return;
  let file;
  try {
    file = await sink.end(new Blob(pieces, { type: FORMATS[format].mime }));
  } catch (error) {
    fail('speak', error);
    return;
  }
  const url = URL.createObjectURL(file);
  state.urls.push(url);
  download.href = url;
  download.download = `${jobId || 'speech'}.${FORMATS[format].extension}`;
  download.textContent = `Download ${format.toUpperCase()}`;
  download.hidden = false;
  say('speak', `Job ${short(jobId)}: done, ${kilobytes(received)} of ${format.toUpperCase()}.`);
  if (jobId) refreshJob(jobId).catch(() => {});
}

// ---------------------------------------------------------------------------------------------
// Cloning: a reference from a file or the microphone, uploaded, then followed to the end.

let recording = null;
let recorded = null;

function showReference() {
  const file = $('clone-file').files[0];
  const preview = $('record-preview');
  let text = 'No reference chosen yet.';
  if (file) text = `Reference: the file ${file.name} (${kilobytes(file.size)}).`;
  else if (recorded) text = `Reference: the recording (${recorded.seconds.toFixed(1)} s).`;
  $('clone-reference').textContent = text;
  preview.hidden = !recorded || Boolean(file);
}

function mixdown(audio) {
  const mono = new Float32Array(audio.length);
  for (let c = 0; c < audio.numberOfChannels; c += 1) {
    const channel = audio.getChannelData(c);
    for (let i = 0; i < mono.length; i += 1) mono[i] += channel[i] / audio.numberOfChannels;
  }
  return mono;
}

// The API takes WAV or MP3; the browser records Opus in WebM or similar, so the recording is
// decoded and written out again as a 16-bit mono WAV file.
async function recordingToWav(blob) {
  const context = new OfflineAudioContext(1, 1, PCM_RATE);
  const audio = await context.decodeAudioData(await blob.arrayBuffer());
  const samples = mixdown(audio);
  const pcm = new DataView(new ArrayBuffer(samples.length * 2));
  samples.forEach((s, i) => pcm.setInt16(2 * i, Math.max(-1, Math.min(1, s)) * 32767, true));
  return { wav: wavFile(pcm.buffer, audio.sampleRate), seconds: audio.duration };
}

async function toggleRecording() {
  const button = $('record-toggle');
  if (recording) {
    recording.recorder.stop();
    return;
  }
  clearError('clone');
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia || !window.MediaRecorder) {
    fail('clone', new Error('This browser cannot record here: recording needs https or localhost.'));
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
  } catch (error) {
    fail('clone', new Error(`The microphone could not be opened: ${error.message}`));
    return;
  }
  const recorder = new MediaRecorder(stream);
  const pieces = [];
  const started = performance.now();
  const timer = setInterval(() => {
    say('clone', `Recording: ${Math.floor((performance.now() - started) / 1000)} s.`);
  }, 1000);
  recording = { recorder };
  recorder.addEventListener('dataavailable', (event) => {
    if (event.data.size) pieces.push(event.data);
  });
  recorder.addEventListener('stop', async () => {
    clearInterval(timer);
    for (const track of stream.getTracks()) track.stop();
    recording = null;
    button.textContent = 'Record';
    button.setAttribute('aria-pressed', 'false');
    try {
      const { wav, seconds } = await recordingToWav(new Blob(pieces, { type: recorder.mimeType }));
      recorded = new File([wav], 'recording.wav', { type: 'audio/wav' });
      recorded.seconds = seconds;
      $('clone-file').value = '';
      const preview = $('record-preview');
      if (preview.src) URL.revokeObjectURL(preview.src);
      preview.src = URL.createObjectURL(recorded);
      say('clone', `Recorded ${seconds.toFixed(1)} s.`);
    } catch (error) {
      recorded = null;
      say('clone', '');
      fail('clone', new Error(`The recording could not be read: ${error.message}`));
    }
    showReference();
  });
  recorder.start(250);
  button.textContent = 'Stop recording';
  button.setAttribute('aria-pressed', 'true');
  say('clone', 'Recording: 0 s.');
}

// Follows a job to its end: its WebSocket when one can be opened, else (or when the socket
// goes away first) polling its record, which is the truth either way. `update` gets each event
// or record; the promise resolves with the last one.
function followJob(jobId, wsPath, update) {
  return new Promise((resolve) => {
    let finished = false;
    const finish = (state) => {
      if (finished) return;
      finished = true;
      resolve(state);
    };
    const poll = async () => {
      while (!finished) {
        try {
          const job = await (await api(`/api/jobs/${jobId}`)).json();
          update(job);
          if (TERMINAL.has(job.status)) finish(job);
        } catch (error) {
          if (error.status === 404) {
            const gone = { status: 'failed', error: { error: error.code, message: error.message } };
            update(gone);
            finish(gone);
          }
        }
        if (!finished) await delay(1000);
      }
    };
    const url = socketUrl(wsPath || `/ws/jobs/${jobId}`);
    if (!url) {
      poll();
      return;
    }
    const socket = new WebSocket(url);
    socket.addEventListener('message', (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return;
      }
      update(event);
      if (TERMINAL.has(event.status)) finish(event);
    });
    socket.addEventListener('close', () => {
      if (!finished) poll();
    });
  });
}

async function cloneVoice(event) {
  event.preventDefault();
  clearError('clone');
  const form = new FormData();
  const file = $('clone-file').files[0] || recorded;
  if (file) form.append('file', file, file.name);
  form.append('name', $('clone-name').value);
  form.append('language', $('clone-language').value);
  const transcript = $('clone-transcript').value.trim();
  if (transcript) form.append('prompt_text', transcript);

  const progress = $('clone-progress');
  const events = $('clone-events');
  progress.value = 0;
  events.replaceChildren();
  say('clone', 'Uploading the reference; the gateway checks its speech…');
  let accepted;
  try {
    accepted = await (await api('/api/voices', { method: 'POST', body: form })).json();
  } catch (error) {
    say('clone', '');
    fail('clone', error);
    return;
  }
  const voice = accepted.voice;
  remember({
    job_id: accepted.job_id,
    kind: 'enrollment',
    voice: voice.name,
    status: 'queued',
    progress: 0,
    made: new Date().toISOString(),
  });
  const speech = typeof voice.speech_seconds === 'number' ? `, ${voice.speech_seconds.toFixed(1)} s of speech` : '';
  say('clone', `Voice ${voice.name} accepted${speech}; enrolling…`);
  loadVoices();

  const last = await followJob(accepted.job_id, accepted.ws_url, (state) => {
    if (typeof state.progress === 'number') progress.value = state.progress;
    const line = `${percent(state.progress)} ${state.status}${state.message ? `: ${state.message}` : ''}`;
    if (events.lastElementChild?.textContent !== line) events.append(el('li', {}, line));
    if (!TERMINAL.has(state.status)) {
      const detail = state.message ? `: ${state.message}` : '';
      say('clone', `Voice ${voice.name}: ${state.status} (${percent(state.progress)})${detail}.`);
    }
    updateJob(accepted.job_id, { status: state.status, progress: state.progress, error: state.error });
  });
  if (last.status === 'succeeded') {
    progress.value = 1;
    try {
      const ready = await (await api(`/api/voices/${voice.voice_id}`)).json();
      const similarity = similarityText(ready);
      say('clone', `Voice ${ready.name} is ${ready.status}${similarity ? ` (similarity ${similarity})` : ''}.`);
    } catch (error) {
      fail('clone', error);
    }
  } else {
    say('clone', `Voice ${voice.name}: enrollment failed.`);
    const reason = last.error || { error: '', message: 'the enrollment failed' };
    fail('clone', new ApiError(0, reason.error, reason.message));
  }
  await loadVoices();
}

// ---------------------------------------------------------------------------------------------
// Recent jobs: the API has no list of jobs, so the tab keeps its own and asks for each one's
// state.

function recentJobs() {
  try {
    return JSON.parse(sessionStorage.getItem(JOBS_ITEM)) || [];
  } catch {
    return [];
  }
}

function saveJobs(jobs) {
  sessionStorage.setItem(JOBS_ITEM, JSON.stringify(jobs.slice(0, MAX_JOBS)));
  renderJobs();
}

function remember(job) {
  saveJobs([job, ...recentJobs().filter((j) => j.job_id !== job.job_id)]);
}

function updateJob(jobId, changes) {
  const jobs = recentJobs();
  const job = jobs.find((j) => j.job_id === jobId);
  if (!job) return;
  const before = JSON.stringify(job);
  for (const [name, value] of Object.entries(changes)) {
    if (value !== undefined) job[name] = value;
  }
  // Redrawn only on a change, so that the refresh every two seconds never takes the focus
  // from a button in the table.
  if (JSON.stringify(job) !== before) saveJobs(jobs);
}

async function refreshJob(jobId) {
  try {
    const job = await (await api(`/api/jobs/${jobId}`)).json();
    updateJob(jobId, { status: job.status, progress: job.progress, error: job.error });
  } catch (error) {
    if (error.status === 404) {
      updateJob(jobId, { status: 'expired', error: { error: error.code, message: error.message } });
    } else {
      throw error;
    }
  }
}

async function refreshJobs(all) {
  const jobs = recentJobs().filter((j) => all || !TERMINAL.has(j.status));
  for (const job of jobs) await refreshJob(job.job_id);
  return jobs.length;
}

async function playJob(job) {
  clearError('jobs');
  try {
    const format = job.format || 'wav';
    const audio = await (await api(`/api/jobs/${job.job_id}/audio?format=${format}`)).blob();
    stopPlayback();
    const state = { controller: new AbortController(), urls: [], nodes: new Set() };
    playback = state;
    const playable = format === 'pcm' ? wavFile(await audio.arrayBuffer(), PCM_RATE) : audio;
    const url = URL.createObjectURL(playable);
    state.urls.push(url);
    const player = $('player');
    player.src = url;
    startPlaying(player);
    say('jobs', `Playing job ${short(job.job_id)}.`);
  } catch (error) {
    fail('jobs', error);
  }
}

async function downloadJob(job) {
  clearError('jobs');
  try {
    const format = job.format || 'wav';
    const audio = await (await api(`/api/jobs/${job.job_id}/audio?format=${format}`)).blob();
    saveBlob(audio, `${job.job_id}.${FORMATS[format].extension}`);
    say('jobs', `Job ${short(job.job_id)} downloaded.`);
  } catch (error) {
    fail('jobs', error);
  }
}

function renderJobs() {
  const rows = recentJobs().map((job) => {
    const made = new Date(job.made);
    let status = job.status;
    if (job.error && job.error.message) status = `${job.status}: ${job.error.message}`;
    const actions = el('td');
    if (job.kind === 'speech' && job.status === 'succeeded') {
      actions.append(
        el('button', { type: 'button', 'aria-label': `Play job ${short(job.job_id)}`, onclick: () => playJob(job) }, 'Play'),
        el('button', { type: 'button', 'aria-label': `Download job ${short(job.job_id)}`, onclick: () => downloadJob(job) }, 'Download'),
      );
    }
    return el(
      'tr',
      { dataset: { jobId: job.job_id, status: job.status, kind: job.kind } },
      el('td', {}, el('time', { datetime: job.made }, made.toLocaleTimeString())),
      el('td', {}, job.kind === 'speech' ? `speech (${job.format})` : job.kind),
      el('td', { class: 'id', title: job.job_id }, short(job.job_id)),
      el('td', {}, job.voice || ''),
      el('td', { class: `state-${job.status}` }, status),
      el('td', {}, percent(job.progress)),
      actions,
    );
  });
  if (!rows.length) {
    rows.push(el('tr', {}, el('td', { class: 'empty', colspan: 7 }, 'No jobs from this tab yet.')));
  }
  $('jobs-table').tBodies[0].replaceChildren(...rows);
}

// While any job of the tab runs, its state is asked for every two seconds.
function watchJobs() {
  setInterval(() => {
    if (document.hidden) return;
    refreshJobs(false).catch(() => {});
  }, 2000);
}

// ---------------------------------------------------------------------------------------------
// The fleet: admin keys see the live workers, pushed over `/ws` on every change.

let fleet = { generation: 0, socket: null, timer: null };

function stopFleet() {
  fleet.generation += 1;
  if (fleet.socket) fleet.socket.close(1000);
  clearTimeout(fleet.timer);
  fleet.socket = null;
}

function renderNodes(nodes) {
  const rows = nodes.map((n) =>
    el(
      'tr',
      { dataset: { nodeId: n.node_id, status: n.status } },
      el('td', { class: 'id' }, n.node_id),
      el('td', {}, n.engine),
      el('td', {}, `${n.host}:${n.port}`),
      el('td', { class: `state-${n.status}` }, n.status),
      el(
        'td',
        {},
        el('meter', { min: 0, max: n.max_concurrent || 1, value: n.current_load || 0, 'aria-hidden': 'true' }),
        ` ${n.current_load} of ${n.max_concurrent}`,
      ),
      el('td', {}, n.last_seen ? new Date(n.last_seen).toLocaleTimeString() : ''),
    ),
  );
  if (!rows.length) {
    rows.push(el('tr', {}, el('td', { class: 'empty', colspan: 6 }, 'No live workers.')));
  }
  $('fleet-table').tBodies[0].replaceChildren(...rows);
}

function fleetSummary(nodes) {
  const engines = [...new Set(nodes.map((n) => n.engine))].sort().join(', ');
  return `${count(nodes.length, 'worker')} live${engines ? ` (${engines})` : ''}`;
}

async function startFleet() {
  stopFleet();
  const generation = fleet.generation;
  clearError('fleet');
  let nodes;
  // Asked over plain HTTP first: a refused WebSocket does not tell the page why.
  try {
    nodes = (await (await api('/api/nodes')).json()).nodes || [];
  } catch (error) {
    if (generation !== fleet.generation) return;
    renderNodes([]);
    say('fleet', '');
    fail('fleet', error);
    return;
  }
  if (generation !== fleet.generation) return;
  renderNodes(nodes);
  const url = socketUrl('/ws');
  if (!url) {
    say('fleet', `${fleetSummary(nodes)}; refreshed every 2 s.`);
    fleet.timer = setTimeout(startFleet, 2000);
    return;
  }
  const socket = new WebSocket(url);
  fleet.socket = socket;
  socket.addEventListener('message', (message) => {
    if (generation !== fleet.generation) return;
    try {
      const current = JSON.parse(message.data).nodes || [];
      renderNodes(current);
      say('fleet', `${fleetSummary(current)}; live.`);
    } catch {
      // A message that is not the fleet: nothing to show.
    }
  });
  socket.addEventListener('close', (event) => {
    if (generation !== fleet.generation) return;
    say('fleet', `The live connection closed (${event.code}); reconnecting in 3 s.`);
    fleet.timer = setTimeout(startFleet, 3000);
  });
}

// ---------------------------------------------------------------------------------------------
// Start.

async function useKey(key) {
  if (key) sessionStorage.setItem(KEY_ITEM, key);
  else sessionStorage.removeItem(KEY_ITEM);
  say('key', key ? 'Key set for this tab.' : 'No key: requests go without one.');
  await loadVoices();
  await startFleet();
}

function init() {
  const keyInput = $('api-key');
  keyInput.value = apiKey();
  $('key-form').addEventListener('submit', (event) => {
    event.preventDefault();
    useKey(keyInput.value.trim());
  });
  $('key-forget').addEventListener('click', () => {
    keyInput.value = '';
    useKey('');
  });
  $('speak-form').addEventListener('submit', speak);
  $('speak-voice').addEventListener('change', fillSpeakLanguages);
  $('player').addEventListener('play', () => {
    // The element replays the whole file: whatever Web Audio still plays of the stream stops.
    if (playback) for (const node of playback.nodes) node.stop();
  });
  $('clone-form').addEventListener('submit', cloneVoice);
  $('clone-file').addEventListener('change', () => {
    if ($('clone-file').files.length) recorded = null;
    showReference();
  });
  $('record-toggle').addEventListener('click', toggleRecording);
  $('voices-language').addEventListener('change', renderVoices);
  $('voices-kind').addEventListener('change', renderVoices);
  $('voices-refresh').addEventListener('click', loadVoices);
  $('jobs-refresh').addEventListener('click', async () => {
    clearError('jobs');
    try {
      const refreshed = await refreshJobs(true);
      say('jobs', `${count(refreshed, 'job')} refreshed.`);
    } catch (error) {
      fail('jobs', error);
    }
  });
  $('jobs-clear').addEventListener('click', () => {
    saveJobs([]);
    say('jobs', 'List cleared.');
  });
  renderJobs();
  watchJobs();
  loadVoices().then(startFleet);
}

init();
