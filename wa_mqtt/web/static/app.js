// The bridge's page: state pushed by the bridge (server-sent events on api/events), actions sent as
// requests to api/request/<target>/<command>: the same requests, checks and answers as on MQTT.
// Plain JavaScript, no framework; every URL is relative, so the page works under Home Assistant's
// ingress prefix too.
"use strict";

const accounts = new Map(); // phone -> its card's elements and last view
const RUNNING = new Set(["connected", "connecting", "pairing"]);
const STOPPED = new Set(["stopped", "logged_out"]);
const LABELS = {
  since: "In this state since", last_connected: "Last connected", next_retry_at: "Next retry",
  reconnect_attempt: "Retry attempt", messages_in: "Messages in", messages_out: "Messages out",
  reconnects: "Reconnects", queued_outgoing: "Queued to send", last_event: "Last event",
  last_event_at: "Last heard from WhatsApp",
};
const HEALTH = {
  version: "Version", broker_connected: "Broker", pending_publishes: "Waiting for the broker",
  spool_dropped: "Dropped from the spool", requests_waiting: "Requests waiting", requests_busy: "Requests refused (busy)",
  disk_full: "Disk full", held_in_memory: "Held in memory (disk full)", duplicates_dropped: "Duplicates dropped",
  uptime: "Up for",
};

const $ = (selector, root = document) => root.querySelector(selector);

function when(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return date.toLocaleString();
}

function inSeconds(iso) {
  const seconds = Math.round((new Date(iso) - Date.now()) / 1000);
  return seconds > 0 ? `in ${seconds} s` : "now";
}

function duration(seconds) {
  const s = Math.floor(seconds);
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.floor(s / 60)} min`;
  if (s < 172800) return `${Math.floor(s / 3600)} h`;
  return `${Math.floor(s / 86400)} days`;
}

function toast(text, bad) {
  const box = $("#toast");
  box.textContent = text;
  box.className = "show" + (bad ? " bad" : "");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.className = ""; }, bad ? 7000 : 3500);
}

// One request through the bridge's request layer; the answer is MQTT's response body.
async function request(target, command, body) {
  let answer;
  try {
    const response = await fetch(`api/request/${encodeURIComponent(target)}/${encodeURIComponent(command)}`, {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body || {}),
      credentials: "same-origin",
    });
    answer = await response.json();
  } catch (error) {
    toast(`${command}: the bridge did not answer (${error.message})`, true);
    return null;
  }
  if (answer.status === "ok") {
    toast(`${command} ${target === "bridge" ? (body.phone || "") : target}: done`);
  } else {
    toast(`${command}: ${answer.code}: ${answer.error}`, true);
  }
  return answer;
}

function card(phone) {
  let entry = accounts.get(phone);
  if (entry) return entry;
  const node = $("#card-template").content.firstElementChild.cloneNode(true);
  node.dataset.phone = phone;
  entry = {node, view: null, qrSerial: null};
  accounts.set(phone, entry);
  node.addEventListener("click", (event) => onAction(phone, event));
  $(".test-form", node).addEventListener("submit", (event) => {
    event.preventDefault();
    const form = event.target;
    request(phone, "send", {to: form.to.value.trim().replace(/^\+/, ""), text: form.text.value});
  });
  const list = $("#accounts");
  $(".empty", list)?.remove();
  const after = [...list.children].find((other) => other.dataset.phone > phone);
  list.insertBefore(node, after || null);
  return entry;
}

function askFirst(phone, node, text, run) {
  const box = $(".confirm", node);
  $(".confirm-text", box).textContent = text;
  box.hidden = false;
  box.dataset.pending = "1";
  box.onclick = (event) => {
    if (event.target.classList.contains("confirm-yes")) run();
    if (event.target.tagName === "BUTTON") box.hidden = true;
    event.stopPropagation();
  };
}

function onAction(phone, event) {
  const action = event.target.dataset?.action;
  if (!action) return;
  const node = accounts.get(phone).node;
  if (action === "connect") request(phone, "connect", {});
  else if (action === "disconnect") request(phone, "disconnect", {});
  else if (action === "logout") {
    askFirst(phone, node, `Log ${phone} out of WhatsApp? It must be paired again to come back.`,
      () => request(phone, "logout", {}));
  } else if (action === "remove") {
    askFirst(phone, node, `Remove ${phone}: log it out and delete its session and backups?`,
      () => request("bridge", "remove", {phone}));
  } else if (action === "test") {
    const form = $(".test-form", node);
    form.hidden = !form.hidden;
    if (!form.hidden && !form.to.value) form.to.value = phone;
  }
}

function figure(list, key, value) {
  const dt = document.createElement("dt");
  dt.textContent = LABELS[key] || HEALTH[key] || key;
  const dd = document.createElement("dd");
  dd.dataset.key = key;
  dd.textContent = value;
  list.append(dt, dd);
  return dd;
}

function showAccount(view) {
  const entry = card(view.phone);
  const node = entry.node;
  entry.view = view;
  node.dataset.state = view.state;
  $(".phone", node).textContent = "+" + view.phone;
  $(".name", node).textContent = view.name || "";
  const state = $(".state", node);
  state.textContent = view.state.replace("_", " ") + (view.degraded ? " (degraded)" : "");
  state.className = "state state-" + view.state; // not the state's bare name: `.pairing` is the QR's box
  $(".error", node).textContent = view.error ? view.error : "";
  const pairing = $(".pairing", node);
  const qr = $(".qr", node);
  pairing.hidden = !view.pairing;
  qr.hidden = !(view.pairing && view.pairing.kind === "qr");
  $(".pair-code", node).textContent = view.pairing && view.pairing.kind === "code" ? view.pairing.code : "";
  $(".pair-hint", node).textContent = !view.pairing ? "" : view.pairing.kind === "qr"
    ? "Scan with WhatsApp: Settings → Linked devices → Link a device"
    : "In WhatsApp: Linked devices → Link a device → Link with phone number instead, then enter this code";
  if (view.pairing && view.pairing.kind === "qr" && entry.qrSerial !== view.pairing.serial) {
    entry.qrSerial = view.pairing.serial;
    qr.src = `api/accounts/${view.phone}/qr.png?v=${view.pairing.serial}`;
  }
  if (!view.pairing) entry.qrSerial = null;
  const list = $(".figures", node);
  list.replaceChildren();
  figure(list, "since", when(view.since));
  if (view.last_connected) figure(list, "last_connected", when(view.last_connected));
  if (view.next_retry_at) {
    figure(list, "next_retry_at", inSeconds(view.next_retry_at)).dataset.at = view.next_retry_at;
    figure(list, "reconnect_attempt", view.reconnect_attempt);
  } else if (view.reconnects_by_itself) {
    // a linked session that dropped: WhatsApp's client library reconnects it by itself (no bridge timer)
    figure(list, "next_retry_at", "automatic");
  }
  figure(list, "messages_in", view.messages_in);
  figure(list, "messages_out", view.messages_out);
  figure(list, "reconnects", view.reconnects);
  if (view.queued_outgoing) figure(list, "queued_outgoing", view.queued_outgoing);
  figure(list, "last_event_at", when(view.last_event_at));
  figure(list, "last_event", view.last_event ? `${view.last_event.type.replaceAll("_", " ")}, ${when(view.last_event.at)}` : "—");
  $('[data-action="connect"]', node).disabled = RUNNING.has(view.state);
  $('[data-action="disconnect"]', node).disabled = STOPPED.has(view.state);
}

function dropAccount(phone) {
  const entry = accounts.get(phone);
  if (entry) entry.node.remove();
  accounts.delete(phone);
  if (!accounts.size) $("#accounts").innerHTML = '<p class="empty">No account yet: pair a number below.</p>';
}

function describeEvent(event) {
  const data = event.data || {};
  const parts = Object.entries(data).filter(([key, value]) => key !== "phone" && value !== null && typeof value !== "object")
    .map(([key, value]) => `${key.replaceAll("_", " ")}: ${value}`);
  return `${event.type.replaceAll("_", " ")}${data.phone ? " +" + data.phone : ""}${parts.length ? " (" + parts.join(", ") + ")" : ""}`;
}

function addEvent(event, atEnd) {
  const list = $("#events");
  $(".empty", list)?.remove();
  const item = document.createElement("li");
  item.dataset.type = event.type;
  const time = document.createElement("time");
  time.dateTime = event.at;
  time.textContent = new Date(event.at).toLocaleTimeString();
  item.append(time, describeEvent(event));
  if (atEnd) list.append(item); else list.prepend(item);
  while (list.children.length > 50) list.lastElementChild.remove();
}

function showHealth(health) {
  const list = $("#health");
  list.replaceChildren();
  for (const key of Object.keys(HEALTH)) {
    if (!(key in health)) continue;
    let value = health[key];
    let cls = "";
    if (key === "broker_connected") { value = value ? "connected" : "not connected"; cls = health[key] ? "ok" : "bad"; }
    else if (key === "disk_full") { value = value ? "yes" : "no"; cls = health[key] ? "bad" : "ok"; }
    else if (key === "uptime") value = duration(value);
    const dd = figure(list, key, value);
    if (cls) dd.className = cls;
  }
}

function snapshot(state) {
  for (const phone of [...accounts.keys()]) {
    if (!state.accounts.some((view) => view.phone === phone)) dropAccount(phone);
  }
  state.accounts.forEach(showAccount);
  $("#events").replaceChildren();
  if (!state.events.length) $("#events").innerHTML = '<li class="empty">None yet.</li>';
  state.events.forEach((event) => addEvent(event, true));
  showHealth({version: state.version, ...state.health});
  document.title = `WhatsApp bridge (${state.accounts.length})`;
}

function listen() {
  const live = $("#live");
  const source = new EventSource("api/events");
  const on = (name, handle) => source.addEventListener(name, (message) => handle(JSON.parse(message.data)));
  on("snapshot", snapshot);
  on("account", showAccount);
  on("account_removed", (data) => dropAccount(data.phone));
  on("event", (event) => addEvent(event, false));
  on("health", (health) => showHealth({version: $('#health [data-key="version"]')?.textContent, ...health}));
  source.onopen = () => { live.textContent = "live"; live.className = "live on"; };
  source.onerror = () => { live.textContent = "reconnecting…"; live.className = "live off"; };
}

document.addEventListener("DOMContentLoaded", () => {
  $("#pair-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const phone = $("#pair-phone").value.trim().replace(/^\+/, "");
    request("bridge", "pair", {phone, method: $("#pair-method").value}).then((answer) => {
      if (answer && answer.status === "ok") $("#pair-phone").value = "";
    });
  });
  setInterval(() => { // the countdown to each account's next retry (no request: the time is known)
    for (const dd of document.querySelectorAll('dd[data-key="next_retry_at"]')) dd.textContent = inSeconds(dd.dataset.at);
  }, 1000);
  listen();
});
