// Stratus portal, the detail pages: a VM, a host, the image gallery, networks, usage and cost.
// Routed by the URL's hash (#/vm/NAME, #/host/ID, #/images, #/networks, #/usage); #/ is the overview
// (portal.js). Uses portal.js's api(), element(), badge(), bar(), coresPhrase(), confirmThen() and
// view.
"use strict";

const TIMELINE_QUIET_MS = 600;  // the replay of /v1/events is over once it is quiet this long
const USAGE_DAYS = 7;
const CHART = { width: 640, height: 220, left: 48, bottom: 28, top: 10 };
const PALETTE = ["#2463eb", "#1f9d55", "#c77c02", "#d2373c", "#7c3aed", "#0891b2", "#be185d"];

const PAGES = ["overview", "vm", "host", "images", "networks", "usage"];

function route() {
  const [, page = "", arg = ""] = location.hash.split("/");
  const name = PAGES.includes(page) ? page : "overview";
  for (const p of PAGES) $(`#page-${p}`).hidden = p !== name;
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("current", link.dataset.page === name);
  }
  const id = decodeURIComponent(arg);
  if (name === "vm") showVm(id);
  else if (name === "host") showHost(id);
  else if (name === "images") showImages();
  else if (name === "networks") showNetworks();
  else if (name === "usage") showUsage();
  return name;
}

const link = (href, text) => element("a", { href, textContent: text });
const vmLink = (name) => link(`#/vm/${encodeURIComponent(name)}`, name);
const hostLink = (id) => (id ? link(`#/host/${encodeURIComponent(id)}`, id) : "–");
const when = (iso) => new Date(iso).toLocaleString();

function facts(pairs) {
  return element("dl", { class: "facts" }, ...pairs.flatMap(([term, value]) => [
    element("dt", { textContent: term }),
    element("dd", {}, value instanceof Node ? value : document.createTextNode(String(value))),
  ]));
}

function table(headings, rows, empty) {
  const body = rows.length ? rows
    : [element("tr", {}, element("td", { class: "empty", colSpan: headings.length, textContent: empty }))];
  return element("table", {},
    element("thead", {}, element("tr", {}, ...headings.map((h) => element("th", { textContent: h })))),
    element("tbody", {}, ...body));
}

function failed(where, error) {
  where.replaceChildren(element("p", { class: "notice", textContent: error.message }));
}

// ------------------------------------------------------------------ VM detail

async function showVm(name) {
  const page = $("#page-vm");
  page.replaceChildren(element("h2", { textContent: `VM ${name}` }));
  let vm;
  try {
    vm = (await api("GET", `/v1/vms/${encodeURIComponent(name)}`)).vm;
  } catch (error) {
    failed(page, error);
    return;
  }
  const host = vm.host ? view.hosts.get(vm.host) : null;
  const disks = (vm.disks || []).map((d) => element("tr", { "data-disk": d.disk_id },
    element("td", { textContent: d.disk_id }), element("td", { textContent: d.kind }),
    element("td", { textContent: d.kind === "os" ? `image ${d.image}` : `${d.size_mib} MiB` }),
    element("td", { textContent: d.storage }),
    element("td", {}, ...((d.replicas || []).length ? copyCells(d.replicas) : [hostLink(d.host)])),
    element("td", { class: "actions" }, d.kind === "data" && vm.state === "stopped"
      ? action("Detach", (e) => confirmThen(e.target, () => detachDisk(vm, d), "Detach"), true)
      : null)));
  const nics = (vm.nics || []).map((n) => element("tr", { "data-nic": n.vnet },
    element("td", {}, link("#/networks", n.vnet)),
    element("td", { textContent: n.ip ? `${n.ip}/${n.prefix_len}` : "no address yet" }),
    element("td", { textContent: n.gateway }), element("td", { textContent: n.mac })));
  const endpoints = (vm.endpoints || []).map((p) => element("tr", { "data-endpoint": `${p.vm_port}/${p.protocol}` },
    element("td", { textContent: `${p.vm_port}/${p.protocol}` }),
    element("td", { class: "where", textContent: p.public_port === null ? "not placed" : `${p.address || "?"}:${p.public_port}` }),
    element("td", { textContent: (p.allow || []).join(", ") || "anyone" }),
    element("td", { class: "actions" },
      action("Remove", (e) => confirmThen(e.target, () => removeEndpoint(vm, p), "Remove"), true))));
  const forward = element("form", { class: "inline", id: "endpoint-form" },
    element("label", { textContent: "Forward VM port " },
      element("input", { name: "vm_port", type: "number", min: 1, max: 65535, required: true, placeholder: "22" })),
    element("label", { textContent: " from host port " },
      element("input", { name: "public_port", type: "number", min: 1, max: 65535, placeholder: "any" })),
    element("select", { name: "protocol" }, option("tcp", "TCP"), option("udp", "UDP")),
    element("label", { textContent: " allow " }, element("input", { name: "allow", placeholder: "anyone, or 203.0.113.0/24" })),
    element("button", { type: "submit", textContent: "Add endpoint" }));
  forward.addEventListener("submit", (e) => { e.preventDefault(); addEndpoint(vm, forward); });
  const attach = element("form", { class: "inline", id: "attach-form" },
    element("label", { textContent: "New data disk (MiB) " },
      element("input", { name: "size_mib", type: "number", min: 1, value: 1024, required: true })),
    element("button", { type: "submit", textContent: "Attach" }));
  attach.addEventListener("submit", (e) => { e.preventDefault(); attachDisk(vm, +attach.elements.size_mib.value); });
  const capture = element("form", { class: "inline", id: "capture-form" },
    element("label", { textContent: "Capture as image " },
      element("input", { name: "image", required: true, placeholder: `${vm.name}-snap` })),
    element("button", { type: "submit", textContent: "Capture" }));
  capture.addEventListener("submit", (e) => { e.preventDefault(); captureVm(vm, capture.elements.image.value.trim()); });
  page.append(
    element("p", { class: "links" },
      link(`/console.html?vm=${encodeURIComponent(vm.name)}`, "Open console"), " · ",
      link("#/", "back to overview")),
    facts([["State", badge(vm.state)], ["Size", `${vm.size} (${coresPhrase(vm.cpu_milli)}, ${gib(vm.mem_mib)} GiB)`],
      ["Image", vm.image], ["Host", hostLink(vm.host)], ["Region", vm.region || (host && host.region) || "any"],
      ["Availability set", vm.availability_set || "–"], ["Generation", vm.generation],
      ["Reason", vm.reason || "–"], ["Migration", migrationText(vm.migration)],
      ["Created", when(vm.created_at)], ["Updated", when(vm.updated_at)]]),
    element("div", { class: "actions-bar" }, ...vmActions(vm)),
    element("h3", { textContent: "Disks" }),
    table(["Disk", "Kind", "Size", "Storage", "Host", ""], disks, "no disks"),
    vm.state === "stopped" ? attach : element("p", { class: "hint", textContent: "Disks attach and detach while the VM is stopped." }),
    element("h3", { textContent: "Network interfaces" }),
    table(["Network", "Address", "Gateway", "MAC"], nics, "no network interfaces"),
    element("h3", { textContent: "Endpoints" }),
    table(["VM port", "Answers at", "Allowed from", ""], endpoints, "no endpoints"),
    (vm.nics || []).length ? forward : null,
    vm.state === "running" ? capture : null,
    element("p", { id: "vm-result", class: "result" }),
    element("h3", { textContent: "Events" }),
    element("ol", { id: "timeline", class: "timeline" }, element("li", { class: "hint", textContent: "loading…" })));
  timeline(vm.name);
}

// A live migration under way, in words: "copying to h2 (attempt 3, drain): 40/128 MiB".
function migrationText(m) {
  if (!m) return "–";
  const bytes = m.total_mib ? `: ${m.transferred_mib}/${m.total_mib} MiB` : "";
  return `${m.phase} to ${m.target} (attempt ${m.attempt}, ${m.cause})${bytes}`;
}

async function vmCall(vm, method, path, body, done) {
  const out = $("#vm-result");
  try {
    const reply = await api(method, path, body);
    if (reply.vm) view.vms.set(reply.vm.name, reply.vm);
    out.className = "result";
    out.textContent = done;
    if (location.hash.startsWith("#/vm/")) showVm(vm.name);
  } catch (error) {
    out.className = "result error";
    out.textContent = error.message;
  }
}

const vmPath = (vm) => `/v1/vms/${encodeURIComponent(vm.name)}`;
// A replicated disk's copies: each host linked, with how its copy stands ("current", "joining").
const copyCells = (copies) => copies.flatMap((c, i) => [
  ...(i ? [document.createTextNode(", ")] : []), hostLink(c.host),
  document.createTextNode(` ${c.state}${c.progress ? ` ${Math.round(c.progress * 100)}%` : ""}`)]);
const attachDisk = (vm, sizeMib) => vmCall(vm, "POST", `${vmPath(vm)}/disks`, { size_mib: sizeMib }, "disk attached");
const detachDisk = (vm, d) => vmCall(vm, "DELETE", `${vmPath(vm)}/disks/${encodeURIComponent(d.disk_id)}`, undefined, "disk detached");
const captureVm = (vm, image) => vmCall(vm, "POST", `${vmPath(vm)}/capture`, { image }, `capturing into image ${image}`);
const removeEndpoint = (vm, p) => vmCall(vm, "DELETE",
  `${vmPath(vm)}/endpoints/${p.vm_port}?protocol=${p.protocol}`, undefined, "endpoint removed");

function addEndpoint(vm, form) {
  const body = { vm_port: +form.elements.vm_port.value, protocol: form.elements.protocol.value };
  if (form.elements.public_port.value) body.public_port = +form.elements.public_port.value;
  const allow = form.elements.allow.value.split(/[\s,]+/).filter(Boolean);
  if (allow.length) body.allow = allow.map((a) => (a.includes("/") ? a : `${a}/32`));
  vmCall(vm, "POST", `${vmPath(vm)}/endpoints`, body, `port ${body.vm_port} forwarded`);
}

// The VM's events, replayed from the start of the events stream; the replay ends when quiet.
async function timeline(name) {
  const list = $("#timeline");
  const seen = [];
  const abort = new AbortController();
  let quiet = setTimeout(() => abort.abort(), TIMELINE_QUIET_MS * 3);
  try {
    const response = await fetch("/v1/events?since=0", {
      headers: headers({ Accept: "text/event-stream" }), signal: abort.signal });
    if (!response.ok) throw new Error(`events: HTTP ${response.status}`);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      clearTimeout(quiet);
      quiet = setTimeout(() => abort.abort(), TIMELINE_QUIET_MS);
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const frame = parseFrame(buffer.slice(0, cut));
        buffer = buffer.slice(cut + 2);
        if (frame && frame.type === "vm") {
          const event = JSON.parse(frame.data);
          if (event.name === name) seen.push(event);
        }
      }
    }
  } catch (error) {
    if (error.name !== "AbortError") console.warn("timeline", error);
  } finally {
    clearTimeout(quiet);
  }
  if (!list.isConnected) return;
  list.replaceChildren(...seen.map((e) => element("li", { "data-seq": String(e.seq) },
    element("time", { textContent: when(e.time) }), " ", badge(e.state),
    e.host ? ` on ${e.host}` : "", ` (generation ${e.generation})`,
    e.reason ? element("span", { class: "reason", textContent: ` ${e.reason}` }) : null)));
  if (!seen.length) list.append(element("li", { class: "hint", textContent: "no events" }));
}

// ------------------------------------------------------------------ host detail

async function showHost(id) {
  const page = $("#page-host");
  page.replaceChildren(element("h2", { textContent: `Host ${id}` }));
  try {
    const [hosts, vms] = await Promise.all([listAll("/v1/hosts", "hosts"),
      listAll(`/v1/vms?host=${encodeURIComponent(id)}`, "vms")]);
    const host = hosts.hosts.find((h) => h.host_id === id);
    if (!host) throw new Error(`no host ${id}`);
    const age = host.last_heartbeat_age_s === null ? "never" : `${host.last_heartbeat_age_s.toFixed(1)} s ago`;
    page.append(
      element("p", { class: "links" }, link("#/", "back to overview")),
      facts([["State", badge(hostState(host))], ["Region", host.region], ["Fault domain", host.fault_domain],
        ["Driver", host.driver], ["Last heartbeat", element("span", { id: "heartbeat-age", textContent: age })],
        ["CPU", bar(host.allocated.cpu_milli, host.capacity.cpu_milli, cores, "cores")],
        ["Memory", bar(host.allocated.mem_mib, host.capacity.mem_mib, gib, "GiB")],
        ["Disk", host.disk_capacity_mib ? bar(host.disk_used_mib, host.disk_capacity_mib, gib, "GiB")
          : `${gib(host.disk_used_mib)} GiB used (no limit reported)`],
        ["Disk replicas", String(host.replicas)],
        ["Labels", Object.entries(host.labels).map(([k, v]) => `${k}=${v}`).join(", ") || "–"],
        ["Draining", host.draining ? `yes (${host.drain_remaining} left)` : "no"]]),
      element("h3", { textContent: "VMs" }),
      table(["Name", "State", "Size", "Gen"], vms.vms.map((vm) => element("tr", { "data-vm": vm.name },
        element("td", {}, vmLink(vm.name)), element("td", {}, badge(vm.state)),
        element("td", { textContent: vm.size }), element("td", { textContent: String(vm.generation) }))),
      "no VMs on this host"));
  } catch (error) {
    failed(page, error);
  }
}

// ------------------------------------------------------------------ images

async function showImages() {
  const page = $("#page-images");
  const upload = element("form", { id: "upload-form", class: "create" },
    element("label", { textContent: "Name " }, element("input", { name: "name", required: true, placeholder: "ubuntu-24" })),
    element("label", { textContent: "OS " }, element("input", { name: "os", value: "linux" })),
    element("label", { textContent: "File " }, element("input", { name: "file", type: "file", required: true })),
    element("button", { type: "submit", textContent: "Upload" }),
    element("span", { id: "upload-result", class: "result" }));
  upload.addEventListener("submit", (e) => { e.preventDefault(); uploadImage(upload); });
  page.replaceChildren(element("h2", { textContent: "Images" }), upload,
    element("div", { id: "images-table" }, element("p", { class: "hint", textContent: "loading…" })));
  try {
    view.images = (await listAll("/v1/images", "images")).images;
  } catch (error) {
    failed($("#images-table"), error);
    return;
  }
  const rows = view.images.map((i) => element("tr", { "data-image": i.name },
    element("td", { textContent: i.name }), element("td", {}, badge(i.state)),
    element("td", { textContent: i.format }), element("td", { textContent: i.os }),
    element("td", { textContent: i.size_bytes ? `${(i.size_bytes / 2 ** 20).toFixed(1)} MiB` : "–" }),
    element("td", { textContent: String(i.version) }),
    element("td", {}, i.source_vm ? vmLink(i.source_vm) : i.builtin ? "built in" : "uploaded"),
    element("td", { class: "reason", textContent: i.reason }),
    element("td", { class: "actions" }, i.builtin ? null
      : action("Delete", (e) => confirmThen(e.target, () => deleteImage(i)), true))));
  $("#images-table").replaceChildren(
    table(["Name", "State", "Format", "OS", "Size", "Version", "From", "Reason", ""], rows, "no images"));
}

async function uploadImage(form) {
  const out = $("#upload-result");
  const file = form.elements.file.files[0];
  const name = form.elements.name.value.trim();
  out.className = "result";
  out.textContent = `uploading ${file.size} bytes…`;
  try {
    const query = new URLSearchParams({ os: form.elements.os.value.trim() || "linux" });
    const response = await fetch(`/v1/images/${encodeURIComponent(name)}?${query}`, {
      method: "PUT", body: file, headers: headers({ "Content-Type": "application/octet-stream" }) });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) throw new ApiError(data.error?.code || response.status, data.error?.detail || "");
    out.textContent = `${data.image.name}: ${data.image.state} (${data.image.format})`;
    showImages().then(() => { $("#upload-result").textContent = out.textContent; });
  } catch (error) {
    out.className = "result error";
    out.textContent = error.message;
  }
}

async function deleteImage(image) {
  try {
    await api("DELETE", `/v1/images/${encodeURIComponent(image.name)}`);
    showImages();
  } catch (error) {
    notice(`delete image ${image.name}: ${error.message}`);
  }
}

async function loadImageChoices() {
  try {
    const listed = (await listAll("/v1/images", "images")).images;
    const images = listed.filter((i) => i.state === "available");
    const select = $("#create-form select[name=image]");
    const keep = select.value;
    select.replaceChildren(...images.map((i) => option(i.name, `${i.name} (${i.os})`)));
    select.value = images.some((i) => i.name === keep) ? keep : images.some((i) => i.name === "tiny") ? "tiny" : select.value;
  } catch (error) {
    console.warn("images", error);
  }
}

// ------------------------------------------------------------------ networks

async function showNetworks() {
  const page = $("#page-networks");
  const create = element("form", { id: "vnet-form", class: "create", autocomplete: "off" },
    element("label", { textContent: "Name " }, element("input", { name: "name", required: true, pattern: "[a-z0-9-]{1,63}", placeholder: "front" })),
    element("label", { textContent: "Range " }, element("input", { name: "cidr", required: true, placeholder: "10.1.0.0/24" })),
    element("label", { textContent: "Region " }, element("input", { name: "region", placeholder: "any" })),
    element("button", { type: "submit", textContent: "Create" }),
    element("span", { id: "vnet-result", class: "result" }));
  create.addEventListener("submit", (e) => { e.preventDefault(); createVnet(create); });
  page.replaceChildren(element("h2", { textContent: "Virtual networks" }), create,
    element("div", { id: "vnets-table" }, element("p", { class: "hint", textContent: "loading…" })));
  let vnets;
  try {
    vnets = (await listAll("/v1/vnets", "vnets")).vnets;
  } catch (error) {
    failed($("#vnets-table"), error);
    return;
  }
  const rows = vnets.map((v) => element("tr", { "data-vnet": v.name },
    element("td", { textContent: v.name }), element("td", { textContent: v.cidr }),
    element("td", { textContent: v.region || "any" }), element("td", { textContent: String(v.vni) }),
    element("td", { textContent: v.gateway }),
    element("td", {}, bar(v.addresses_used, v.addresses_total, String, "addresses")),
    element("td", { class: "vms", textContent: String(v.vms) }),
    element("td", { class: "actions" }, v.vms ? null
      : action("Delete", (e) => confirmThen(e.target, () => deleteVnet(v)), true))));
  $("#vnets-table").replaceChildren(
    table(["Name", "Range", "Region", "VNI", "Gateway", "Addresses", "VMs", ""], rows, "no networks yet"));
}

async function createVnet(form) {
  const out = $("#vnet-result");
  const body = { name: form.elements.name.value.trim(), cidr: form.elements.cidr.value.trim() };
  if (form.elements.region.value.trim()) body.region = form.elements.region.value.trim();
  try {
    const reply = await api("POST", "/v1/vnets", body);
    await showNetworks();
    $("#vnet-result").className = "result";
    $("#vnet-result").textContent = `${reply.vnet.name}: gateway ${reply.vnet.gateway}, ${reply.vnet.addresses_total} addresses`;
    loadVnetChoices();
  } catch (error) {
    out.className = "result error";
    out.textContent = error.message;
  }
}

async function deleteVnet(vnet) {
  try {
    await api("DELETE", `/v1/vnets/${encodeURIComponent(vnet.name)}`);
    showNetworks();
    loadVnetChoices();
  } catch (error) {
    notice(`delete network ${vnet.name}: ${error.message}`);
  }
}

async function loadVnetChoices() {
  try {
    const vnets = (await listAll("/v1/vnets", "vnets")).vnets;
    const select = $("#create-form select[name=vnet]");
    const keep = select.value;
    select.replaceChildren(option("", "none"),
      ...vnets.map((v) => option(v.name, `${v.name} (${v.cidr}, ${v.addresses_total - v.addresses_used} free)`)));
    select.value = vnets.some((v) => v.name === keep) ? keep : "";
  } catch (error) {
    console.warn("networks", error);
  }
}

// ------------------------------------------------------------------ usage

function dayStart(offset) {
  const day = new Date();
  day.setUTCHours(0, 0, 0, 0);
  day.setUTCDate(day.getUTCDate() + offset);
  return day;
}

async function showUsage() {
  const page = $("#page-usage");
  page.replaceChildren(element("h2", { textContent: "Usage and cost" }),
    element("p", { class: "hint", textContent: `Cost per size per day, the last ${USAGE_DAYS} days (UTC), from /v1/usage.` }),
    element("div", { id: "usage-chart" }, element("p", { class: "hint", textContent: "loading…" })),
    element("div", { id: "usage-table" }));
  const days = [...Array(USAGE_DAYS).keys()].map((i) => dayStart(i - USAGE_DAYS + 1));
  let reports;
  try {
    reports = await Promise.all(days.map((day) => {
      const until = new Date(Math.min(day.getTime() + 86400000, Date.now()));
      const query = new URLSearchParams({ since: day.toISOString(), until: until.toISOString() });
      return api("GET", `/v1/usage?${query}`).then((r) => r.usage);
    }));
  } catch (error) {
    failed($("#usage-chart"), error);
    return;
  }
  const sizes = [...new Set(reports.flatMap((r) => r.sizes.map((s) => s.size)))].sort();
  const costs = reports.map((r) => Object.fromEntries(r.sizes.map((s) => [s.size, s.cost])));
  $("#usage-chart").replaceChildren(costChart(days, sizes, costs));
  const total = reports.reduce((sum, r) => sum + r.cost, 0);
  const rows = sizes.map((size) => element("tr", { "data-size": size },
    element("td", { textContent: size }),
    ...costs.map((c) => element("td", { textContent: (c[size] || 0).toFixed(2) })),
    element("td", { textContent: costs.reduce((s, c) => s + (c[size] || 0), 0).toFixed(2) })));
  $("#usage-table").replaceChildren(
    table(["Size", ...days.map((d) => d.toISOString().slice(5, 10)), "Total"], rows, "no usage yet"),
    element("p", { id: "usage-total", textContent: `Total: ${total.toFixed(2)}` }));
}

// A stacked bar per day, one colour per size; drawn as SVG here, no library.
function costChart(days, sizes, costs) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = (tag, attributes = {}, text = "") => {
    const node = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attributes)) node.setAttribute(k, String(v));
    if (text) node.textContent = text;
    return node;
  };
  const { width, height, left, bottom, top } = CHART;
  const totals = costs.map((c) => Object.values(c).reduce((a, b) => a + b, 0));
  const max = Math.max(...totals, 0.01);
  const plotH = height - bottom - top;
  const slot = (width - left) / days.length;
  const root = svg("svg", { id: "cost-chart", viewBox: `0 0 ${width} ${height + 24}`, width, role: "img",
    "aria-label": "cost per size per day" });
  for (const f of [0, 0.5, 1]) {
    const y = top + plotH * (1 - f);
    root.append(svg("line", { x1: left, x2: width, y1: y, y2: y, class: "grid" }),
      svg("text", { x: left - 6, y: y + 4, "text-anchor": "end", class: "axis" }, (max * f).toFixed(2)));
  }
  days.forEach((day, i) => {
    let y = top + plotH;
    sizes.forEach((size, s) => {
      const cost = costs[i][size] || 0;
      if (!cost) return;
      const h = (cost / max) * plotH;
      y -= h;
      const rect = svg("rect", { x: left + i * slot + slot * 0.15, y, width: slot * 0.7, height: h,
        fill: PALETTE[s % PALETTE.length], "data-size": size });
      rect.append(svg("title", {}, `${size} ${day.toISOString().slice(0, 10)}: ${cost.toFixed(2)}`));
      root.append(rect);
    });
    root.append(svg("text", { x: left + i * slot + slot / 2, y: height - 8, "text-anchor": "middle",
      class: "axis" }, day.toISOString().slice(5, 10)));
  });
  sizes.forEach((size, s) => {
    const x = left + s * 110;
    root.append(svg("rect", { x, y: height + 8, width: 10, height: 10, fill: PALETTE[s % PALETTE.length] }),
      svg("text", { x: x + 14, y: height + 17, class: "axis" }, size));
  });
  return root;
}

window.addEventListener("hashchange", route);
route();
loadImageChoices();
loadVnetChoices();
