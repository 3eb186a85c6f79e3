// Stratus portal, shared by every page (loaded first): the API token, the notice line and the
// reading of server-sent events. Each page has a #token-form with a #token field and a #notice
// paragraph in its markup.
//
// The token is asked for when the API answers 401, kept for the browser tab (sessionStorage)
// and sent as a bearer token; entering one wakes whatever waited for it.
"use strict";

const $ = (selector) => document.querySelector(selector);

const session = {
  token: sessionStorage.getItem("stratus-token") || "",
  waiters: [], // resolved by the next token entered (one-shot)
  listeners: [], // called on every token entered
};

function headers(extra = {}) {
  const all = { ...extra };
  if (session.token) all.Authorization = `Bearer ${session.token}`;
  return all;
}

function notice(text) {
  const element = $("#notice");
  element.textContent = text;
  element.hidden = !text;
}

function needToken() {
  notice("This scheduler needs an API token: enter it above.");
  $("#token").focus();
}

function tokenEntered() {
  return new Promise((resolve) => session.waiters.push(resolve));
}

function onToken(listener) {
  session.listeners.push(listener);
}

$("#token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  session.token = $("#token").value.trim();
  sessionStorage.setItem("stratus-token", session.token);
  $("#token").value = "";
  notice("");
  session.waiters.splice(0).forEach((resolve) => resolve());
  session.listeners.forEach((listener) => listener());
});

// ------------------------------------------------------------------ server-sent events

// One frame of a text/event-stream: {id, type, data}, or null for a frame without data (a
// comment, a keep-alive). Data lines are joined with "\n", as EventSource does.
function parseFrame(frame) {
  const event = { id: null, type: "message", data: [] };
  for (const line of frame.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "id") event.id = value;
    else if (field === "event") event.type = value;
    else if (field === "data") event.data.push(value);
  }
  return event.data.length ? { ...event, data: event.data.join("\n") } : null;
}

// Calls onEvent(type, data, id) for each event of a fetched stream (read with fetch, not
// EventSource, so that the token can be sent), with data parsed as JSON; returns at its end.
async function readEvents(response, onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = parseFrame(buffer.slice(0, cut));
      buffer = buffer.slice(cut + 2);
      if (event) onEvent(event.type, JSON.parse(event.data), event.id);
    }
  }
}
