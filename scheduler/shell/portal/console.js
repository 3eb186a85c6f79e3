// Stratus console page (/console.html?vm=NAME): the VM's serial console, live, over
// GET /v1/vms/NAME/console (server-sent events read with fetch, so the token can be sent),
// and an input line (POST /v1/vms/NAME/console/input) when the VM's driver relays input. The
// token, the notice line and event-stream reading are shared.js's (loaded before this).
"use strict";

const RECONNECT_MS = 2000;
const MAX_SCREEN_CHARS = 200000;

const vm = new URLSearchParams(location.search).get("vm") || "";
const view = {
  generation: null,
  next: null, // offset of the next byte to show
  decoder: new TextDecoder(),
  closed: false,
};

function setLive(state, text) {
  const element = $("#live");
  element.className = `live ${state === "on" ? "on" : "off"}`;
  element.textContent = text;
}

// ------------------------------------------------------------------ output

function bytesOf(base64) {
  const text = atob(base64);
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i += 1) bytes[i] = text.charCodeAt(i);
  return bytes;
}

// Joins pieces by offset, as the CLI does: nothing shown twice, a new generation shown whole.
function accept(piece) {
  let data = bytesOf(piece.data);
  const end = piece.offset + data.length;
  if (view.next === null || piece.generation !== view.generation) {
    view.generation = piece.generation;
  } else if (end <= view.next) {
    return;
  } else {
    data = data.subarray(Math.max(0, view.next - piece.offset));
  }
  view.next = end;
  show(view.decoder.decode(data, { stream: true }));
}

function show(text) {
  const screen = $("#screen");
  const atBottom = screen.scrollHeight - screen.scrollTop - screen.clientHeight < 40;
  // Carriage returns and terminal escape sequences have no meaning in a <pre>.
  const clean = text.replace(/\r/g, "").replace(/\x1b\[[0-9;?]*[A-Za-z]/g, "");
  screen.textContent = (screen.textContent + clean).slice(-MAX_SCREEN_CHARS);
  if (atBottom) screen.scrollTop = screen.scrollHeight;
}

function handle(type, data) {
  if (type === "attached") {
    $("#where").textContent = `${data.vm} on host ${data.host}` +
      (data.writable ? "" : " (output only: this host's driver relays no input)");
    $("#input-form").hidden = !data.writable;
    accept(data.output);
  } else if (type === "output") {
    accept(data);
  } else if (type === "closed") {
    view.closed = true;
    setLive("off", "closed");
    notice(`The console closed: ${data.reason || "the VM left its host"}.`);
    $("#input-form").hidden = true;
  }
}

async function follow() {
  while (!view.closed) {
    try {
      const response = await fetch(`/v1/vms/${encodeURIComponent(vm)}/console`, {
        headers: headers({ Accept: "text/event-stream" }),
      });
      if (response.status === 401) {
        needToken();
        await tokenEntered();
        continue;
      }
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        const error = body.error || { code: response.status, detail: response.statusText };
        setLive("off", "no console");
        notice(`${error.code}: ${error.detail}`);
        return;
      }
      setLive("on", "live");
      await readEvents(response, handle);
    } catch (error) {
      console.warn("console stream interrupted", error);
    }
    if (view.closed) return;
    setLive("off", "reconnecting…");
    await new Promise((resolve) => setTimeout(resolve, RECONNECT_MS));
  }
}

// ------------------------------------------------------------------ input

async function send(text) {
  const response = await fetch(`/v1/vms/${encodeURIComponent(vm)}/console/input`, {
    method: "POST",
    headers: headers({ "Content-Type": "application/json" }),
    body: JSON.stringify({ text }),
  });
  if (response.status === 401) needToken();
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    const error = body.error || { code: response.status, detail: response.statusText };
    notice(`${error.code}: ${error.detail}`);
  }
}

$("#input-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const line = $("#line");
  send(`${line.value}\n`);
  line.value = "";
});
$("#ctrl-c").addEventListener("click", () => send("\x03"));

// ------------------------------------------------------------------ start

if (!/^[a-z0-9-]{1,63}$/.test(vm)) {
  setLive("off", "no console");
  notice("Open this page as /console.html?vm=NAME (a VM name).");
} else {
  document.title = `${vm} · Console · Stratus`;
  $("#title").textContent = `Console of ${vm}`;
  follow();
}
