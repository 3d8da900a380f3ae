// Memharbor console: plain JS, no SDK and nothing fetched from elsewhere. Signs in through the Firebase
// Auth REST API (the emulator in dev), reads the admin routes of token_http with the admin's ID token,
// and drives the demo panel with the same Firestore writes an app makes (emulator REST API, under rules).
"use strict";

const state = { config: null, admin: null, caller: null, receiver: null, callId: null, poll: null,
  placedAt: 0, refresh: null, played: null };
const $ = (id) => document.getElementById(id);
const POLL_MS = 500;
// A call without a channel this long after it was placed: the watcher is not reacting.
const WATCHER_GRACE_MS = 5000;

function showError(message) {
  const box = $("errors");
  if (!box.textContent.includes(message)) box.textContent += (box.textContent ? "\n" : "") + message;
}
function clearErrors() { $("errors").textContent = ""; }
function text(id, value) { $(id).textContent = value === null || value === undefined || value === "" ? "-" : String(value); }
function cell(row, value, cls) {
  const td = row.insertCell();
  td.textContent = value === null || value === undefined ? "-" : String(value);
  if (cls) td.className = cls;
  return td;
}

// ---- Firebase Auth (REST) ----
async function signIn(email, password) {
  const base = state.config.authEmulator;
  if (!base) throw new Error("sign-in needs the Auth emulator (this console signs in through it in dev)");
  const url = `${base}/identitytoolkit.googleapis.com/v1/accounts:signInWithPassword?key=any`;
  const response = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ email, password, returnSecureToken: true }) });
  const body = await response.json();
  if (!response.ok) throw new Error(`sign-in as ${email} failed: ${body.error ? body.error.message : response.status}`);
  return { uid: body.localId, token: body.idToken, email };
}

// ---- token_http admin routes ----
async function api(path, asBlob) {
  if (!state.admin) throw new Error("sign in as an admin first");
  const response = await fetch(path, { headers: { Authorization: `Bearer ${state.admin.token}` } });
  if (!response.ok) {
    let reason = `${response.status}`;
    try { reason += ` ${(await response.json()).error}`; } catch (e) { /* not JSON */ }
    throw new Error(`${path}: ${reason}`);
  }
  return asBlob ? response.arrayBuffer() : response.json();
}

// ---- Firestore emulator REST, as a signed-in user (the security rules apply) ----
function documentsBase() {
  return `projects/${state.config.projectId}/databases/(default)/documents`;
}
function toValue(v) {
  if (v === null) return { nullValue: null };
  if (typeof v === "boolean") return { booleanValue: v };
  return { stringValue: String(v) };
}
function fromValue(v) {
  if ("stringValue" in v) return v.stringValue;
  if ("booleanValue" in v) return v.booleanValue;
  if ("integerValue" in v) return Number(v.integerValue);
  if ("doubleValue" in v) return v.doubleValue;
  if ("timestampValue" in v) return v.timestampValue;
  if ("nullValue" in v) return null;
  if ("mapValue" in v) return fromFields(v.mapValue.fields || {});
  if ("arrayValue" in v) return (v.arrayValue.values || []).map(fromValue);
  return null;
}
function fromFields(fields) {
  const out = {};
  for (const [k, v] of Object.entries(fields)) out[k] = fromValue(v);
  return out;
}
async function firestoreError(response, what) {
  let status = `${response.status}`;
  try { const body = await response.json(); status = body.error.status || body.error.message; } catch (e) { /* */ }
  const code = status === "PERMISSION_DENIED" ? "permission-denied" : status;
  return new Error(`${what}: ${code}`);
}
// One write with server timestamps, as serverTimestamp() in an SDK: documents:commit with REQUEST_TIME.
async function commit(user, path, fields, stamps, exists) {
  const write = {
    update: { name: `${documentsBase()}/${path}`, fields: Object.fromEntries(Object.entries(fields).map(([k, v]) => [k, toValue(v)])) },
    updateTransforms: stamps.map((f) => ({ fieldPath: f, setToServerValue: "REQUEST_TIME" })),
    currentDocument: { exists },
  };
  if (exists) write.updateMask = { fieldPaths: Object.keys(fields) };
  const response = await fetch(`${state.config.firestoreEmulator}/v1/${documentsBase()}:commit`, {
    method: "POST", headers: { "Content-Type": "application/json", Authorization: `Bearer ${user.token}` },
    body: JSON.stringify({ writes: [write] }) });
  if (!response.ok) throw await firestoreError(response, `${user.email} writing ${path}`);
}
async function read(user, path) {
  const response = await fetch(`${state.config.firestoreEmulator}/v1/${documentsBase()}/${path}`, {
    headers: { Authorization: `Bearer ${user.token}` } });
  if (response.status === 404) return null;
  if (!response.ok) throw await firestoreError(response, `${user.email} reading ${path}`);
  return fromFields((await response.json()).fields || {});
}

// ---- the demo panel ----
async function placeCall() {
  clearErrors();
  const demo = state.config.demo;
  const callId = crypto.randomUUID();
  try {
    await commit(state.caller, `calls/${callId}`, { callId, groupId: demo.groupId, callerId: demo.caller.uid,
      receiverId: demo.receiver.uid, status: "pending", callerName: demo.caller.name, record: true },
      ["createdAt", "updatedAt"], false);
  } catch (e) { showError(e.message); return; }
  state.callId = callId;
  text("caller-call", callId);
  state.placedAt = Date.now();
  state.played = null;
  $("place-call").disabled = true;
  $("demo-player").textContent = "";
  text("demo-recording-status", null);
  text("demo-recording-file", null);
  clearInterval(state.poll);
  state.poll = setInterval(() => pollCall().catch((e) => showError(e.message)), POLL_MS);
}
async function answer(status) {
  try {
    await commit(state.receiver, `calls/${state.callId}`, { status, answeredOn: state.config.demo.receiverDevice },
      ["answeredAt", "updatedAt"], true);
  } catch (e) { showError(e.message); }
}
async function endCall(user) {
  try { await commit(user, `calls/${state.callId}`, { status: "ended" }, ["endedAt", "updatedAt"], true); }
  catch (e) { showError(e.message); }
}
function pushLine(call) {
  if (call.pushSent === true) return `sent (${call.pushPlatform})`;
  if (call.pushSent === false) return `failed: ${call.pushError}`;
  return "waiting";
}
async function pollCall() {
  const call = await read(state.caller, `calls/${state.callId}`);
  if (!call) return;
  const seen = await read(state.receiver, `calls/${state.callId}`);
  text("caller-status", call.status);
  text("caller-channel", call.channelName);
  text("caller-push", pushLine(call));
  text("receiver-status", seen ? seen.status : null);
  if (!call.channelName && call.status === "pending" && Date.now() - state.placedAt > WATCHER_GRACE_MS) {
    showError("no channel after 5 s: is the watcher running? (memharbor watcher)");
  }
  if (call.pushSent === false) showError(`push failed: ${call.pushError}`);
  const ringing = call.status === "pending" && call.pushSent === true;
  $("ringing").hidden = !ringing;
  $("ringing-from").textContent = call.callerName || call.callerId;
  $("accept").disabled = $("decline").disabled = call.status !== "pending";
  $("caller-end").disabled = $("receiver-end").disabled = call.status !== "accepted";
  if (state.admin && call.channelName) await showDevicePush();
  if (["accepted", "ended"].includes(call.status)) await pollRecording();
  const final = ["declined", "cancelled", "missed"].includes(call.status) || (call.status === "ended" && state.played);
  if (final) { clearInterval(state.poll); $("place-call").disabled = false; }
}
async function showDevicePush() {
  const timeline = await api(`/api/admin/calls/${state.callId}/timeline`);
  const pushes = ((timeline.server || {}).pushes || []).filter((p) => p.status === "pending");
  text("receiver-push", pushes.map((p) => `${p.device} (${p.platform}): ${p.result}${p.error ? " " + p.error : ""}`).join(", "));
}
async function pollRecording() {
  const rec = await read(state.receiver, `recordings/call-${state.callId}`);
  if (!rec) { text("demo-recording-status", "not requested yet"); return; }
  text("demo-recording-status", rec.status + (rec.error ? `: ${rec.error}` : ""));
  if (rec.status === "failed") showError(`recording failed: ${rec.error}`);
  if (rec.status === "stopped" && !state.played) {
    state.played = true;
    const spec = rec.spec || {};
    text("demo-recording-file", `${rec.format || "?"} ${spec.sampleRate} Hz, ${spec.channels} channel(s), ${spec.bitDepth} bit, ` +
      `${(rec.duration / 1000).toFixed(1)} s, ${rec.fileSize} bytes`);
    await showPlayer($("demo-player"), `call-${state.callId}`);
  }
}

// ---- audio player and waveform ----
function drawWaveform(canvas, wav) {
  const view = new DataView(wav);
  let offset = 12;
  while (offset + 8 <= view.byteLength && view.getUint32(offset, false) !== 0x64617461) offset += 8 + view.getUint32(offset + 4, true);
  const start = offset + 8;
  const samples = Math.max(0, Math.floor((view.byteLength - start) / 2));
  canvas.width = canvas.clientWidth || 600;
  canvas.height = 80;
  const g = canvas.getContext("2d");
  g.fillStyle = "#7cc4ff";
  const per = Math.max(1, Math.floor(samples / canvas.width));
  for (let x = 0; x < canvas.width && x * per < samples; x++) {
    let peak = 0;
    for (let i = x * per; i < Math.min(samples, (x + 1) * per); i += 4) peak = Math.max(peak, Math.abs(view.getInt16(start + i * 2, true)));
    const h = Math.max(1, (peak / 32768) * canvas.height);
    g.fillRect(x, (canvas.height - h) / 2, 1, h);
  }
}
async function showPlayer(container, sid) {
  container.textContent = "";
  try {
    const wav = await api(`/api/admin/recordings/${sid}/audio`, true);
    const audio = document.createElement("audio");
    audio.controls = true;
    audio.id = `audio-${sid}`;
    audio.src = URL.createObjectURL(new Blob([wav], { type: "audio/wav" }));
    const canvas = document.createElement("canvas");
    canvas.className = "waveform";
    container.append(audio, canvas);
    drawWaveform(canvas, wav);
  } catch (e) { showError(e.message); }
}

// ---- admin views ----
async function loadCalls() {
  const { calls } = await api("/api/admin/calls?limit=20");
  const body = $("calls-body");
  body.textContent = "";
  for (const row of calls) {
    const tr = body.insertRow();
    const link = cell(tr, row.callId.slice(0, 13));
    link.title = row.callId;
    link.className = "link";
    link.onclick = () => { $("timeline-id").value = row.callId; show("timeline"); };
    cell(tr, row.call.status);
    cell(tr, row.ringingSeconds);
    const rung = ((row.server || {}).pushes || []).filter((p) => p.status === "pending");
    cell(tr, rung.map((p) => `${p.device}: ${p.result}`).join(", ") || "none");
    cell(tr, row.call.pushSent === false ? `failed ${row.call.pushError}` : row.call.pushSent ? "sent" : "-",
      row.call.pushSent === false ? "bad" : row.call.pushSent ? "ok" : "");
    cell(tr, row.call.channelName);
  }
}
async function loadTimeline() {
  const id = $("timeline-id").value.trim();
  if (!id) return;
  const timeline = await api(`/api/admin/calls/${encodeURIComponent(id)}/timeline`);
  const list = $("timeline-explanation");
  list.textContent = "";
  for (const line of timeline.explanation) list.appendChild(document.createElement("li")).textContent = line;
  const body = $("timeline-body");
  body.textContent = "";
  for (const event of timeline.events) {
    const tr = body.insertRow();
    cell(tr, event.at);
    cell(tr, event.kind);
    cell(tr, event.worker);
    cell(tr, Object.entries(event.detail).map(([k, v]) => `${k}=${v}`).join(" "));
  }
}
async function loadWorkers() {
  const { workers } = await api("/api/admin/workers");
  const body = $("workers-body");
  body.textContent = "";
  for (const w of workers) {
    const tr = body.insertRow();
    cell(tr, w.kind);
    cell(tr, w.instanceId);
    cell(tr, w.alive ? "alive" : "expired", w.alive ? "ok" : "bad");
    cell(tr, w.beatAt);
    cell(tr, `${w.host} / ${w.pid}`);
  }
  if (!workers.some((w) => w.kind === "watcher" && w.alive)) showError("no live watcher: calls will not ring");
}
async function loadProblems() {
  const { problems } = await api("/api/admin/problems?limit=50");
  const body = $("problems-body");
  body.textContent = "";
  for (const p of problems) {
    const tr = body.insertRow();
    cell(tr, p.callId);
    cell(tr, p.kind, "bad");
    cell(tr, p.detail);
    cell(tr, p.at);
  }
  if (!problems.length) cell(body.insertRow(), "no push errors or violations among recent calls");
}
async function loadRecordings() {
  const { recordings } = await api("/api/admin/recordings?limit=20");
  const body = $("recordings-body");
  body.textContent = "";
  for (const r of recordings) {
    const tr = body.insertRow();
    cell(tr, r.sid);
    cell(tr, r.status + (r.error ? `: ${r.error}` : ""), r.status === "failed" ? "bad" : "");
    cell(tr, r.duration === null ? null : (r.duration / 1000).toFixed(1));
    cell(tr, r.spec ? `${r.format} ${r.spec.sampleRate} Hz ${r.spec.channels}ch ${r.spec.bitDepth}-bit` : r.format);
    cell(tr, r.fileSize);
    const action = tr.insertCell();
    if (r.status === "stopped") {
      const play = action.appendChild(document.createElement("button"));
      play.textContent = "Play";
      play.onclick = () => showPlayer($("recordings-player"), r.sid);
    }
  }
}
const LOADERS = { calls: loadCalls, timeline: loadTimeline, workers: loadWorkers, problems: loadProblems, recordings: loadRecordings };

function show(view) {
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.view === view);
  for (const s of document.querySelectorAll(".view")) s.classList.toggle("active", s.id === `view-${view}`);
  clearInterval(state.refresh);
  const load = LOADERS[view];
  if (!load) return;
  const run = () => load().catch((e) => showError(e.message));
  run();
  // Live views refresh themselves; the timeline and recordings only on demand (a player must not reset).
  if (["calls", "workers", "problems"].includes(view)) state.refresh = setInterval(run, 2000);
}

async function onSignIn(event) {
  event.preventDefault();
  clearErrors();
  try {
    state.admin = await signIn($("email").value, $("password").value);
    text("who", `signed in as ${state.admin.email}`);
    const demo = state.config.demo;
    if (demo) {
      state.caller = await signIn(demo.caller.email, demo.password);
      state.receiver = await signIn(demo.receiver.email, demo.password);
      $("place-call").disabled = false;
      $("demo-intro").textContent = `${demo.caller.name} calls ${demo.receiver.name} in ${demo.groupId}, each signed in with their own ID token.`;
    }
  } catch (e) { showError(e.message); }
}

async function main() {
  state.config = await (await fetch("/console/config.json")).json();
  const demo = state.config.demo;
  if (demo) {
    $("email").value = demo.admin.email;
    $("password").value = demo.password;
    document.querySelector("#caller .name").textContent = `${demo.caller.name} (${demo.caller.uid})`;
    document.querySelector("#receiver .name").textContent = `${demo.receiver.name} (${demo.receiver.uid})`;
  }
  $("signin").addEventListener("submit", onSignIn);
  $("place-call").onclick = placeCall;
  $("accept").onclick = () => answer("accepted");
  $("decline").onclick = () => answer("declined");
  $("caller-end").onclick = () => endCall(state.caller);
  $("receiver-end").onclick = () => endCall(state.receiver);
  $("timeline-form").addEventListener("submit", (e) => { e.preventDefault(); show("timeline"); });
  for (const b of document.querySelectorAll("#tabs button")) b.onclick = () => show(b.dataset.view);
}
main().catch((e) => showError(`console failed to start: ${e.message}`));
