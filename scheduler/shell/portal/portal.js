// Stratus portal: plain JavaScript over the HTTP API (/v1/...) and its event stream (/v1/events).
// No build step. Everything shown comes from the API; everything done goes through it. The
// token, the notice line and event-stream reading are shared.js's (loaded before this).
"use strict";

const VM_STATES = [
  "pending", "scheduled", "starting", "running", "stopping",
  "stopped", "deleting", "deleted", "failed", "lost",
];
const REFRESH_MS = 15000;      // full refresh (heartbeat ages, anything missed)
const SETTLE_MS = 400;         // after events, refresh host allocations once they settle
const RECONNECT_MS = 2000;

const view = {
  hosts: new Map(),
  vms: new Map(),
  sizes: [],
  events: 0,
};

// ------------------------------------------------------------------ the API

class ApiError extends Error {
  constructor(code, detail) {
    super(`${code}: ${detail}`);
    this.code = code;
  }
}

async function api(method, path, body) {
  const init = { method, headers: headers() };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const data = await response.json().catch(() => ({}));
  if (response.status === 401) needToken();
  if (!response.ok) {
    const error = data.error || { code: String(response.status), detail: response.statusText };
    throw new ApiError(error.code, error.detail);
  }
  return data;
}

// Every item of a list: lists come in pages (each fits in one message), so ask for the next
// page (?marker=) until a reply has no `next`. Returns the reply shape: { [key]: items }.
async function listAll(path, key) {
  const items = [];
  let marker = null;
  for (;;) {
    const joint = path.includes("?") ? "&" : "?";
    const url = marker === null ? path : `${path}${joint}marker=${encodeURIComponent(marker)}`;
    const page = await api("GET", url);
    items.push(...page[key]);
    if (!page.next || page.next === marker) return { [key]: items };
    marker = page.next;
  }
}

// ------------------------------------------------------------------ loading

async function refresh() {
  try {
    const [hosts, vms] = await Promise.all([listAll("/v1/hosts", "hosts"),
      listAll("/v1/vms", "vms")]);
    view.hosts = new Map(hosts.hosts.map((host) => [host.host_id, host]));
    view.vms = new Map(vms.vms.map((vm) => [vm.name, vm]));
    if (!view.sizes.length) await loadSizes();
    render();
    if (typeof route === "function" && location.hash.startsWith("#/host/")) route();
  } catch (error) {
    if (error.code !== "unauthorized") notice(`cannot load: ${error.message}`);
  }
}

async function loadSizes() {
  view.sizes = (await listAll("/v1/sizes", "sizes")).sizes;
  const select = $("#create-form select[name=size]");
  select.replaceChildren(...view.sizes.map((size) => {
    const label = `${size.name} (${coresPhrase(size.cpu_milli)}, ${gib(size.mem_mib)} GiB)`;
    return option(size.name, label);
  }));
  select.value = view.sizes.some((size) => size.name === "Small") ? "Small" : select.value;
}

let settleTimer = null;
function refreshSoon() {
  clearTimeout(settleTimer);
  settleTimer = setTimeout(refresh, SETTLE_MS);
}

// ------------------------------------------------------------------ live updates

async function follow() {
  let lastId = null;
  for (;;) {
    try {
      const extra = { Accept: "text/event-stream" };
      if (lastId !== null) extra["Last-Event-ID"] = lastId;
      const response = await fetch("/v1/events", { headers: headers(extra) });
      if (response.status === 401) {
        needToken();
        await tokenEntered();
        continue;
      }
      if (!response.ok) throw new Error(`events: HTTP ${response.status}`);
      setLive(true);
      refresh(); // subscribed first, then loaded: nothing falls in between
      await readEvents(response, (type, event, id) => {
        lastId = id ?? lastId;
        apply(type, event);
      });
    } catch (error) {
      console.warn("event stream interrupted", error);
    }
    setLive(false);
    await new Promise((resolve) => setTimeout(resolve, RECONNECT_MS));
  }
}

function setLive(on) {
  const element = $("#live");
  element.className = `live ${on ? "on" : "off"}`;
  element.textContent = on ? "live" : "reconnecting…";
}

function apply(type, event) {
  view.events += 1;
  $("#live").dataset.events = String(view.events);
  if (type === "vm") applyVm(event);
  else if (type === "host") applyHost(event);
  renderSoon();
}

// A burst of events (a host failing with many VMs) redraws the tables once per frame.
let renderQueued = false;
function renderSoon() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    render();
  });
}

function applyVm(event) {
  const vm = view.vms.get(event.name);
  if (!vm) {
    if (event.state !== "deleted") refreshSoon();
    return;
  }
  if (new Date(event.time) < new Date(vm.updated_at)) return; // older than what we show
  if (event.state === "deleted") {
    view.vms.delete(event.name);
  } else {
    Object.assign(vm, {
      state: event.state, host: event.host, generation: event.generation,
      reason: event.reason, updated_at: event.time,
      nics: event.nics || vm.nics, endpoints: event.endpoints || vm.endpoints,
    });
  }
  refreshSoon(); // host allocations follow placements and releases
}

function applyHost(event) {
  const host = view.hosts.get(event.host_id);
  if (!host) {
    refreshSoon();
    return;
  }
  Object.assign(host, {
    state: event.state, cordoned: event.cordoned, draining: event.draining,
    drain_remaining: event.drain_remaining,
  });
}

// ------------------------------------------------------------------ rendering

const cores = (milli) => `${+(milli / 1000).toFixed(2)}`;
const gib = (mib) => `${+(mib / 1024).toFixed(2)}`;
const coresPhrase = (milli) => `${cores(milli)} ${milli === 1000 ? "core" : "cores"}`;

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else if (key === "onclick") node.addEventListener("click", value);
    else node[key] = value;
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

function option(value, label) {
  return element("option", { value, textContent: label });
}

function hostState(host) {
  if (host.state === "down") return "down";
  if (host.draining) return "draining";
  if (host.cordoned) return "cordoned";
  return host.fenced ? "fenced" : "up";
}

function bar(used, total, format, unit) {
  const ratio = total > 0 ? used / total : 0;
  const level = ratio >= 0.95 ? " full" : ratio >= 0.8 ? " high" : "";
  const fill = element("div", { class: `fill${level}` });
  fill.style.width = `${Math.min(100, Math.round(ratio * 100))}%`;
  return element("div", { class: "bar", title: `${Math.round(ratio * 100)}% allocated` },
    element("div", { class: "track" }, fill),
    element("span", { class: "text", textContent: `${format(used)} / ${format(total)} ${unit}` }));
}

function badge(text) {
  return element("span", { class: `badge ${text}`, textContent: text });
}

function action(label, handler, danger = false) {
  return element("button", { type: "button", textContent: label, class: danger ? "danger" : "",
    onclick: handler });
}

function regionOf(vm) {
  const host = vm.host ? view.hosts.get(vm.host) : null;
  return host ? host.region : vm.region;
}

function render() {
  const region = $("#filter-region").value;
  const state = $("#filter-state").value;
  renderFilters();
  const hosts = [...view.hosts.values()].filter((h) => !region || h.region === region);
  const vms = [...view.vms.values()]
    .filter((vm) => (!state || vm.state === state) && (!region || regionOf(vm) === region))
    .sort((a, b) => a.name.localeCompare(b.name));
  renderSummary(hosts);
  renderHosts(hosts);
  renderVms(vms);
}

function renderFilters() {
  const regions = [...new Set([...view.hosts.values()].map((h) => h.region))].sort();
  for (const select of [$("#filter-region"), $("#create-form select[name=region]")]) {
    const keep = select.value;
    const first = select.options[0];
    select.replaceChildren(first, ...regions.map((r) => option(r, r)));
    select.value = regions.includes(keep) ? keep : "";
  }
}

function renderSummary(hosts) {
  const up = hosts.filter((h) => h.state === "up");
  const sum = (list, pick) => list.reduce((total, item) => total + pick(item), 0);
  const vms = [...view.vms.values()];
  const tiles = [
    [`${up.length} / ${hosts.length}`, "hosts up"],
    [`${vms.filter((vm) => vm.state === "running").length} / ${vms.length}`, "VMs running"],
    [`${cores(sum(up, (h) => h.allocated.cpu_milli))} / ${cores(sum(up, (h) => h.capacity.cpu_milli))}`,
      "cores allocated"],
    [`${gib(sum(up, (h) => h.allocated.mem_mib))} / ${gib(sum(up, (h) => h.capacity.mem_mib))}`,
      "GiB allocated"],
  ];
  $("#summary").replaceChildren(...tiles.map(([value, label]) => element("div", { class: "tile" },
    element("div", { class: "value", textContent: value }),
    element("div", { class: "label", textContent: label }))));
}

function renderHosts(hosts) {
  const rows = hosts.sort((a, b) => a.host_id.localeCompare(b.host_id)).map((host) => {
    const status = hostState(host);
    const drain = host.draining ? `draining (${host.drain_remaining} left)` : null;
    const age = host.last_heartbeat_age_s === null ? "never" : `${host.last_heartbeat_age_s.toFixed(1)} s ago`;
    return element("tr", { "data-host": host.host_id },
      element("td", {}, element("a", { href: `#/host/${encodeURIComponent(host.host_id)}`,
        textContent: host.host_id })),
      element("td", { class: "state" }, badge(status)),
      element("td", { textContent: host.region }),
      element("td", { textContent: host.fault_domain }),
      element("td", {}, bar(host.allocated.cpu_milli, host.capacity.cpu_milli, cores, "cores")),
      element("td", {}, bar(host.allocated.mem_mib, host.capacity.mem_mib, gib, "GiB")),
      element("td", { textContent: String(host.vms) }),
      element("td", { textContent: drain || age }),
      element("td", { class: "actions" },
        host.draining || status === "down" ? null
          : action("Drain", (event) => confirmThen(event.target, () => hostOp(host, "drain"), "Drain")),
        host.cordoned
          ? action("Uncordon", () => hostOp(host, "uncordon"))
          : action("Cordon", () => hostOp(host, "cordon"))));
  });
  fill("#hosts tbody", rows, 9, "no hosts yet: start a host agent");
}

function renderVms(vms) {
  const rows = vms.map((vm) => element("tr", { "data-vm": vm.name },
    element("td", {}, element("a", { href: `#/vm/${encodeURIComponent(vm.name)}`, textContent: vm.name })),
    element("td", { class: "state" }, badge(vm.state)),
    element("td", { textContent: vm.size }),
    element("td", { textContent: vm.host || "–" }),
    element("td", { textContent: regionOf(vm) || "any" }),
    element("td", { textContent: String(vm.generation) }),
    element("td", { class: "network", textContent: networkOf(vm) }),
    element("td", { class: "reason", textContent: vm.reason }),
    element("td", { class: "actions" }, ...vmActions(vm))));
  fill("#vms tbody", rows, 9, "no VMs");
}

// The first NIC's network and address ("front 10.1.0.2"), "–" without one.
function networkOf(vm) {
  const nics = vm.nics || [];
  if (!nics.length) return "–";
  const more = nics.length > 1 ? ` +${nics.length - 1}` : "";
  return `${nics[0].vnet} ${nics[0].ip || "(no address yet)"}${more}`;
}

function vmActions(vm) {
  const actions = [];
  if (["stopped", "failed"].includes(vm.state)) actions.push(action("Start", () => vmOp(vm, "start")));
  if (["pending", "scheduled", "starting", "running"].includes(vm.state)) {
    actions.push(action("Stop", () => vmOp(vm, "stop")));
  }
  if (vm.state === "running" && !vm.migration) actions.push(action("Migrate", () => vmOp(vm, "migrate", {})));
  if (vm.migration && ["preparing", "copying"].includes(vm.migration.phase)) {
    actions.push(action("Cancel migration", () => vmOp(vm, "migrate/cancel")));
  }
  if (!["deleting", "deleted"].includes(vm.state)) {
    actions.push(action("Delete", (event) => confirmThen(event.target, () => vmOp(vm, "delete")), true));
  }
  return actions;
}

function fill(selector, rows, columns, empty) {
  const body = $(selector);
  if (rows.length) body.replaceChildren(...rows);
  else body.replaceChildren(element("tr", {}, element("td", { class: "empty", colSpan: columns, textContent: empty })));
}

// ------------------------------------------------------------------ actions

// A destructive action asks first: the button's first click arms it ("Really drain?"), a
// second click within 3 s does it.
function confirmThen(button, then, label = "Delete") {
  if (button.dataset.armed) {
    then();
    return;
  }
  button.dataset.armed = "1";
  button.textContent = `Really ${label.toLowerCase()}?`;
  setTimeout(() => { delete button.dataset.armed; button.textContent = label; }, 3000);
}

async function vmOp(vm, op, body) {
  try {
    const reply = op === "delete"
      ? await api("DELETE", `/v1/vms/${encodeURIComponent(vm.name)}`)
      : await api("POST", `/v1/vms/${encodeURIComponent(vm.name)}/${op}`, body);
    if (reply.vm) view.vms.set(reply.vm.name, reply.vm);
    render();
  } catch (error) {
    notice(`${op} ${vm.name}: ${error.message}`);
  }
}

async function hostOp(host, op) {
  try {
    const reply = await api("POST", `/v1/hosts/${encodeURIComponent(host.host_id)}/${op}`);
    if (reply.host) view.hosts.set(reply.host.host_id, reply.host);
    render();
  } catch (error) {
    notice(`${op} ${host.host_id}: ${error.message}`);
  }
}

$("#create-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  const body = { name: form.get("name").trim(), size: form.get("size") };
  if (form.get("image")) body.image = form.get("image");
  if (form.get("region")) body.region = form.get("region");
  if (form.get("availability_set").trim()) body.availability_set = form.get("availability_set").trim();
  if (form.get("vnet")) body.nics = [{ vnet: form.get("vnet") }];
  const result = $("#create-result");
  try {
    const reply = await api("POST", "/v1/vms", body);
    view.vms.set(reply.vm.name, reply.vm);
    result.className = "result";
    result.textContent = `${reply.vm.name}: ${reply.vm.state}`;
    event.target.elements.name.value = "";
    render();
  } catch (error) {
    result.className = "result error";
    result.textContent = error.message;
  }
});

for (const select of [$("#filter-state"), $("#filter-region")]) {
  select.addEventListener("change", render);
}
$("#filter-state").append(...VM_STATES.map((s) => option(s, s)));

onToken(refresh);
refresh();
follow();
setInterval(refresh, REFRESH_MS);
