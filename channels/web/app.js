// The Threadline chat page: threads in the sidebar, the conversation with streamed replies, tool calls, a stop
// button and a composer that stays usable while a turn runs. It talks to the agent's HTTP API (see chat_http.py)
// and follows the open thread's Server-Sent Events with fetch, so it can send the bearer token and Last-Event-ID.
"use strict";

const $ = (id) => document.getElementById(id);
const el = (tag, cls, text) => {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
};

const state = {
  token: null,
  config: null,
  threads: [],
  current: null,          // thread id, or null for a new thread not created yet
  follow: null,           // {ctrl, threadId, lastId}
  calls: new Map(),       // tool call id -> <details>
  live: null,             // {turnId, attempt, text, node, body}
  status: { status: "idle", running_turn_id: null, queued_turn_ids: [] },
  pending: new Map(),     // turn id -> node of a message sent from this page that has not started yet
  pendingSteers: [],      // nodes of steers not yet applied
  mode: "queue",
  oldestSeq: null,
  hasMore: false,
};

// --- API -----------------------------------------------------------------------------------------------------

function authHeaders() {
  return state.token ? { Authorization: "Bearer " + state.token } : {};
}

function threadPath(threadId) {
  return "/api/threads/" + threadId.split("/").map(encodeURIComponent).join("/");
}

class Unauthorized extends Error {}

async function api(method, path, body) {
  const headers = authHeaders();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (res.status === 401) {
    showLogin(state.token ? "That token was not accepted." : "");
    throw new Unauthorized("unauthorized");
  }
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error((data.error && data.error.message) || res.statusText);
  return data;
}

// --- Login ---------------------------------------------------------------------------------------------------

function showLogin(message) {
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("token-input").focus();
}

$("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.token = $("token-input").value.trim();
  localStorage.setItem("threadline-token", state.token);
  $("login").hidden = true;
  start();
});

// --- Threads -------------------------------------------------------------------------------------------------

function ago(seconds) {
  if (!seconds) return "";
  const s = Date.now() / 1000 - seconds;
  if (s < 60) return "now";
  if (s < 3600) return Math.floor(s / 60) + " min";
  if (s < 86400) return Math.floor(s / 3600) + " h";
  return new Date(seconds * 1000).toLocaleDateString(undefined, { month: "short", day: "numeric" });
}

async function loadThreads() {
  const data = await api("GET", "/api/threads");
  state.threads = data.threads;
  renderThreads();
}

function renderThreads() {
  const list = $("thread-list");
  list.replaceChildren();
  if (!state.threads.length) list.append(el("p", "muted small pad", "No threads yet."));
  for (const thread of state.threads) {
    const row = el("div", "thread" + (thread.thread_id === state.current ? " active" : ""));
    row.dataset.threadId = thread.thread_id;
    const open = el("button", "thread-open");
    open.type = "button";
    open.append(el("span", "dot " + thread.status), el("span", "thread-name", thread.name || "New thread"),
      el("span", "thread-time muted", ago(thread.modified_at)));
    open.title = thread.thread_id;
    open.addEventListener("click", () => openThread(thread.thread_id));
    const more = el("span", "thread-actions");
    const rename = el("button", "icon-btn small", "✎");
    rename.type = "button";
    rename.title = "Rename";
    rename.setAttribute("aria-label", "Rename " + (thread.name || "thread"));
    rename.addEventListener("click", () => renameThread(thread.thread_id));
    const archive = el("button", "icon-btn small", "✕");
    archive.type = "button";
    archive.title = "Archive";
    archive.setAttribute("aria-label", "Archive " + (thread.name || "thread"));
    archive.addEventListener("click", () => archiveThread(thread.thread_id));
    more.append(rename, archive);
    row.append(open, more);
    list.append(row);
  }
}

function currentThread() {
  return state.threads.find((t) => t.thread_id === state.current) || null;
}

function renderHeader() {
  const thread = currentThread();
  $("thread-title").textContent = thread ? thread.name || "New thread" : "New thread";
  document.title = (thread && thread.name ? thread.name + " · " : "") + (state.config ? state.config.agent : "Threadline");
  $("rename").hidden = !state.current;
  const cost = $("thread-cost");
  cost.hidden = !(thread && thread.cost_usd > 0);
  if (thread && thread.cost_usd > 0) cost.textContent = "$" + thread.cost_usd.toFixed(4);
  const link = $("temporal-link");
  link.hidden = !(thread && thread.temporal_url);
  if (thread && thread.temporal_url) link.href = thread.temporal_url;
  renderStatus();
}

async function renameThread(threadId) {
  const thread = state.threads.find((t) => t.thread_id === threadId);
  const name = prompt("Rename thread", thread ? thread.name : "");
  if (!name || !name.trim()) return;
  await api("PATCH", threadPath(threadId), { name: name.trim() });
  await loadThreads();
  renderHeader();
}

async function archiveThread(threadId) {
  const thread = state.threads.find((t) => t.thread_id === threadId);
  if (!confirm("Archive “" + ((thread && thread.name) || "this thread") + "”? It leaves the list; its messages are kept.")) return;
  await api("DELETE", threadPath(threadId));
  if (threadId === state.current) newThread();
  await loadThreads();
}

function newThread() {
  stopFollowing();
  state.current = null;
  location.hash = "";
  resetConversation();
  renderThreads();
  renderHeader();
  closeSidebar();
  $("input").focus();
}

async function openThread(threadId) {
  stopFollowing();
  state.current = threadId;
  history.replaceState(null, "", "#thread=" + encodeURIComponent(threadId));
  resetConversation();
  renderThreads();
  renderHeader();
  closeSidebar();
  const page = await api("GET", threadPath(threadId) + "/items?limit=100");
  if (state.current !== threadId) return;
  state.hasMore = page.has_more;
  for (const item of page.items) renderItem(item);
  state.oldestSeq = page.items.length ? page.items[0].seq : null;
  renderLoadEarlier();
  scrollToEnd(true);
  followThread(threadId, page.cursor);
}

async function loadEarlier() {
  if (!state.current || state.oldestSeq === null) return;
  const threadId = state.current;
  const page = await api("GET", threadPath(threadId) + "/items?limit=100&before=" + state.oldestSeq);
  if (state.current !== threadId) return;
  const messages = $("messages");
  const anchor = messages.querySelector(".msg, .note");
  const before = messages.scrollHeight;
  for (const item of page.items) renderItem(item, anchor);
  state.hasMore = page.has_more;
  state.oldestSeq = page.items.length ? page.items[0].seq : state.oldestSeq;
  renderLoadEarlier();
  messages.scrollTop += messages.scrollHeight - before;
}

function renderLoadEarlier() {
  const existing = $("load-earlier");
  if (existing) existing.remove();
  if (!state.hasMore) return;
  const button = el("button", "btn ghost load-earlier", "Load earlier messages");
  button.id = "load-earlier";
  button.type = "button";
  button.addEventListener("click", loadEarlier);
  $("messages").prepend(button);
}

// --- The conversation ----------------------------------------------------------------------------------------

function resetConversation() {
  const messages = $("messages");
  messages.replaceChildren($("empty") || el("div"));
  state.calls.clear();
  state.live = null;
  state.pending.clear();
  state.pendingSteers = [];
  state.status = { status: "idle", running_turn_id: null, queued_turn_ids: [] };
  state.oldestSeq = null;
  state.hasMore = false;
  updateEmpty();
}

function updateEmpty() {
  const empty = $("empty");
  if (empty) empty.hidden = !!$("messages").querySelector(".msg, .note");
}

function nearBottom() {
  const m = $("messages");
  return m.scrollHeight - m.scrollTop - m.clientHeight < 120;
}

function scrollToEnd(force) {
  const m = $("messages");
  if (force || nearBottom()) m.scrollTop = m.scrollHeight;
}

function insertPoint() {
  // Items go before the live reply and before messages still waiting for their turn.
  if (state.live) return state.live.node;
  const waiting = $("messages").querySelector(".msg.pending");
  return waiting || null;
}

function place(node, before) {
  const stick = nearBottom();
  $("messages").insertBefore(node, before === undefined ? insertPoint() : before);
  updateEmpty();
  if (stick) scrollToEnd(true);
}

function userNode(text, label) {
  const node = el("div", "msg user");
  const bubble = el("div", "bubble");
  bubble.innerHTML = renderMarkdown(text);
  if (label) node.append(el("div", "msg-label", label));
  node.append(bubble);
  return node;
}

function toolNode(call) {
  const details = el("details", "tool");
  const summary = el("summary");
  const args = call.arguments && call.arguments !== "{}" ? " " + call.arguments : "";
  summary.append(el("span", "tool-state pending", ""), el("span", "tool-name", call.name),
    el("span", "tool-args", args.length > 90 ? args.slice(0, 89) + "…" : args));
  details.append(summary, el("pre", "tool-output muted", "running…"));
  details.dataset.callId = call.call_id;
  state.calls.set(call.call_id, details);
  return details;
}

function setToolState(callId, cls, text) {
  const details = state.calls.get(callId);
  if (!details) return;
  const mark = details.querySelector(".tool-state");
  mark.className = "tool-state " + cls;
  if (text !== undefined) details.querySelector(".tool-output").textContent = text;
}

function renderItem(item, before) {
  const existing = $("messages").querySelector('[data-seq="' + item.seq + '"]');
  if (existing) existing.remove();
  let node = null;
  if (item.type === "user") {
    const pending = state.pending.get(item.turn_id);
    if (pending && !item.data.steer) { pending.remove(); state.pending.delete(item.turn_id); }
    if (item.data.steer) {
      const i = state.pendingSteers.findIndex((n) => n.dataset.text === item.text);
      if (i >= 0) { state.pendingSteers[i].remove(); state.pendingSteers.splice(i, 1); }
    }
    node = userNode(item.text, item.data.steer ? "steer" : item.sender && item.sender !== "user" ? item.sender : "");
  } else if (item.type === "assistant") {
    node = el("div", "msg assistant");
    const body = el("div", "body");
    if (item.text) {
      const md = el("div", "md");
      md.innerHTML = renderMarkdown(item.text);
      body.append(md);
    }
    if (item.tool_calls && item.tool_calls.length) {
      const tools = el("div", "tools");
      for (const call of item.tool_calls) tools.append(toolNode(call));
      body.append(tools);
    }
    node.append(body);
    if (state.live && state.live.turnId === item.turn_id) {
      state.live.text = "";
      state.live.attempt = 1;
      state.live.body.replaceChildren();
      state.live.node.classList.add("waiting");
    }
  } else if (item.type === "tool_result") {
    setToolState(item.tool_call_id, item.data.ok === false ? "failed" : "ok", item.text);
    return;
  } else if (item.type === "approval") {
    node = approvalNode(item);
  } else if (item.type === "summary") {
    node = el("details", "note summary-note");
    const range = `items ${item.data.first_seq || 1}–${item.data.last_seq || 0}`;
    node.append(el("summary", "", `Earlier messages summarised (${range})`), el("div", "summary-text", item.text));
  } else if (item.type === "error") {
    node = el("div", "note error-note");
    node.append(el("strong", "", "Turn failed: "), document.createTextNode(item.text));
  } else {
    node = el("div", "note", item.text);
  }
  node.dataset.seq = item.seq;
  node.dataset.turnId = item.turn_id;
  place(node, before);
}

function approvalCard(approvalId) {
  return [...$("messages").querySelectorAll(".approval-card")].find((n) => n.dataset.approvalId === approvalId);
}

function approvalNode(item) {
  const id = item.data.approval_id;
  if (item.data.state !== "pending") {
    const card = approvalCard(id);
    if (card) {
      card.querySelector(".approval-actions")?.remove();
      card.classList.add(item.data.state);
      card.append(el("div", "approval-verdict", item.text));
    }
    return el("div", "note approval-note", item.text);
  }
  const card = el("div", "approval-card");
  card.dataset.approvalId = id;
  card.append(el("div", "approval-title", "Approval needed: " + item.tool_name), el("pre", "approval-args",
    item.data.arguments));
  const actions = el("div", "approval-actions");
  const reason = el("input", "approval-reason");
  reason.placeholder = "Reason (optional)";
  const decide = async (decision) => {
    for (const b of actions.querySelectorAll("button")) b.disabled = true;
    try {
      await approvalDecision(id, { decision, reason: reason.value, digest: item.data.digest });
    } catch (e) {
      actions.append(el("div", "approval-error", e.message));
      for (const b of actions.querySelectorAll("button")) b.disabled = false;
    }
  };
  const approve = el("button", "approve", "Approve");
  const deny = el("button", "deny", "Deny");
  approve.onclick = () => decide("approve");
  deny.onclick = () => decide("deny");
  actions.append(reason, approve, deny);
  card.append(actions);
  return card;
}

async function approvalDecision(approvalId, body) {
  const path = "/api/approvals/" + approvalId.split("/").map(encodeURIComponent).join("/");
  const headers = { ...authHeaders(), "Content-Type": "application/json", "X-Threadline-Client": "web" };
  const res = await fetch(path, { method: "POST", headers, body: JSON.stringify(body) });
  if (res.status === 401) { showLogin("That token was not accepted."); throw new Unauthorized("unauthorized"); }
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error((data.error && data.error.message) || res.statusText);
  return data;
}

function ensureLive(turnId) {
  if (state.live && state.live.turnId === turnId) return state.live;
  if (state.live) state.live.node.remove();
  const node = el("div", "msg assistant live waiting");
  const body = el("div", "body md");
  node.append(body, el("span", "typing", ""));
  state.live = { turnId, attempt: 1, text: "", node, body, frame: 0 };
  const waiting = $("messages").querySelector(".msg.pending");
  $("messages").insertBefore(node, waiting);
  updateEmpty();
  scrollToEnd();
  return state.live;
}

function endLive(turnId) {
  if (state.live && state.live.turnId === turnId) {
    state.live.node.remove();
    state.live = null;
  }
}

function paintLive() {
  const live = state.live;
  if (!live || live.frame) return;
  live.frame = requestAnimationFrame(() => {
    live.frame = 0;
    const stick = nearBottom();
    live.body.innerHTML = renderMarkdown(live.text);
    live.node.classList.toggle("waiting", !live.text);
    if (stick) scrollToEnd(true);
  });
}

function onEvent(name, data) {
  switch (name) {
    case "item":
      renderItem(data);
      break;
    case "delta": {
      const live = ensureLive(data.turn_id);
      if (data.attempt < live.attempt) return;
      live.attempt = data.attempt;
      live.text += data.text;
      paintLive();
      break;
    }
    case "retry": {
      const live = ensureLive(data.turn_id);
      live.attempt = data.attempt;
      live.text = "";
      paintLive();
      const note = el("div", "note", "The model call was retried after a failure; its answer starts again.");
      place(note);
      break;
    }
    case "tool":
      if (data.phase === "started") setToolState(data.call_id, "running");
      else setToolState(data.call_id, data.ok === false ? "failed" : "ok");
      break;
    case "turn": {
      // Turn events come in order with the items; status events (polled) confirm them a little later.
      const s = state.status;
      const thread = currentThread();
      if (data.phase === "started") {
        ensureLive(data.turn_id);
        state.status = { ...s, status: "running", running_turn_id: data.turn_id,
          queued_turn_ids: (s.queued_turn_ids || []).filter((id) => id !== data.turn_id) };
        if (thread) thread.status = "running";
      }
      if (data.phase === "ended") {
        endLive(data.turn_id);
        if (s.running_turn_id === data.turn_id) {
          state.status = { ...s, running_turn_id: null, status: data.status === "failed" ? "failed" : "idle" };
          if (thread) thread.status = state.status.status;
        }
        loadThreads().then(renderHeader).catch(() => {});
      }
      renderThreads();
      renderStatus();
      break;
    }
    case "status":
      state.status = data;
      renderStatus();
      break;
    default:
      break;
  }
}

function renderStatus() {
  const s = state.status;
  const running = !!(state.current && s.running_turn_id);
  const badge = $("thread-status");
  const thread = currentThread();
  const status = running ? "running" : thread ? thread.status : "";
  badge.hidden = !state.current || !status;
  badge.textContent = status;
  badge.className = "badge " + status;
  $("stop").hidden = !running;
  $("mode").hidden = !running;
  const queued = (s.queued_turn_ids || []).length;
  $("queue-note").textContent = running ? (queued ? queued + " queued" : "") : "";
  $("input").placeholder = running
    ? (state.mode === "steer" ? "Add to the running turn…" : "Queue a message for the next turn…")
    : "Message " + (state.config ? state.config.agent : "the agent") + "…";
}

// --- Following a thread (SSE over fetch) ---------------------------------------------------------------------

function stopFollowing() {
  if (state.follow) state.follow.ctrl.abort();
  state.follow = null;
}

async function followThread(threadId, cursor) {
  const follow = { ctrl: new AbortController(), threadId, lastId: cursor };
  state.follow = follow;
  while (!follow.ctrl.signal.aborted) {
    try {
      const headers = authHeaders();
      if (follow.lastId) headers["Last-Event-ID"] = follow.lastId;
      const res = await fetch(threadPath(threadId) + "/events", { headers, signal: follow.ctrl.signal });
      if (res.status === 401) { showLogin("That token was not accepted."); return; }
      if (!res.ok || !res.body) throw new Error("events: HTTP " + res.status);
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          dispatch(block, follow);
        }
      }
    } catch (error) {
      if (follow.ctrl.signal.aborted) return;
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

function dispatch(block, follow) {
  let name = "message";
  let data = "";
  let id = null;
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") name = value;
    else if (field === "data") data += (data ? "\n" : "") + value;
    else if (field === "id") id = value;
  }
  if (id) follow.lastId = id;
  if (state.follow !== follow || !data) return;
  try { onEvent(name, JSON.parse(data)); } catch (e) { console.error(e); }
}

// --- Sending -------------------------------------------------------------------------------------------------

async function send(text) {
  let threadId = state.current;
  if (!threadId) {
    const thread = await api("POST", "/api/threads", {});
    threadId = thread.thread_id;
    state.current = threadId;
    history.replaceState(null, "", "#thread=" + encodeURIComponent(threadId));
    state.threads = [thread, ...state.threads.filter((t) => t.thread_id !== threadId)];
    renderThreads();
    renderHeader();
    followThread(threadId, "0-0");
  }
  const running = !!state.status.running_turn_id;
  if (running && state.mode === "steer") {
    const node = userNode(text, "steer · waiting for the next model call");
    node.classList.add("pending");
    node.dataset.text = text;
    state.pendingSteers.push(node);
    place(node, state.live ? state.live.node : insertPoint());
    await api("POST", threadPath(threadId) + "/steer", { text, turn_id: state.status.running_turn_id });
    return;
  }
  const turnId = "turn-" + (crypto.randomUUID ? crypto.randomUUID().replace(/-/g, "") : Date.now() + "" + Math.random()).slice(2);
  const node = userNode(text, running ? "queued · runs after the current turn" : "");
  node.classList.add("pending");
  state.pending.set(turnId, node);
  $("messages").append(node);
  updateEmpty();
  scrollToEnd(true);
  try {
    await api("POST", threadPath(threadId) + "/turns", { text, turn_id: turnId });
  } catch (error) {
    node.classList.add("failed");
    node.querySelector(".msg-label")?.remove();
    node.prepend(el("div", "msg-label error-text", "not sent: " + error.message));
    state.pending.delete(turnId);
  }
}

$("composer").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = $("input");
  const text = input.value.trim();
  if (!text) return;
  input.value = "";
  autosize();
  try { await send(text); } catch (error) { if (!(error instanceof Unauthorized)) alert(error.message); }
});

$("input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});

function autosize() {
  const input = $("input");
  input.style.height = "auto";
  input.style.height = Math.min(input.scrollHeight, 220) + "px";
}
$("input").addEventListener("input", autosize);

$("stop").addEventListener("click", async () => {
  if (!state.current) return;
  $("stop").disabled = true;
  try {
    await api("POST", threadPath(state.current) + "/interrupt", { turn_id: state.status.running_turn_id });
  } finally {
    setTimeout(() => { $("stop").disabled = false; }, 800);
  }
});

for (const button of $("mode").querySelectorAll("button")) {
  button.addEventListener("click", () => {
    state.mode = button.dataset.mode;
    for (const b of $("mode").querySelectorAll("button")) b.classList.toggle("on", b === button);
    renderStatus();
    $("input").focus();
  });
}

$("new-thread").addEventListener("click", newThread);
$("rename").addEventListener("click", () => state.current && renameThread(state.current));

function closeSidebar() { document.body.classList.remove("sidebar-open"); }
$("menu").addEventListener("click", () => document.body.classList.toggle("sidebar-open"));
$("scrim").addEventListener("click", closeSidebar);

// --- Start ---------------------------------------------------------------------------------------------------

async function start() {
  try {
    state.config = await api("GET", "/api/config");
  } catch (error) {
    if (!(error instanceof Unauthorized)) $("thread-title").textContent = "Cannot reach the agent: " + error.message;
    return;
  }
  $("agent-name").textContent = state.config.agent;
  $("room-name").textContent = "room " + state.config.room;
  $("model-name").textContent = "model " + state.config.model;
  await loadThreads();
  const wanted = new URLSearchParams(location.hash.slice(1)).get("thread");
  if (wanted) await openThread(wanted).catch(() => newThread());
  else if (state.config.threading_mode === "none") {
    const main = await api("POST", "/api/threads", {});
    await loadThreads();
    await openThread(main.thread_id);
  } else newThread();
  setInterval(() => loadThreads().then(renderHeader).catch(() => {}), 15000);
}

(function boot() {
  const params = new URLSearchParams(location.search);
  if (params.get("token")) {
    localStorage.setItem("threadline-token", params.get("token"));
    params.delete("token");
    const query = params.toString();
    history.replaceState(null, "", location.pathname + (query ? "?" + query : "") + location.hash);
  }
  state.token = localStorage.getItem("threadline-token");
  autosize();
  start();
})();
