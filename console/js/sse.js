// Server-Sent Events over fetch(): EventSource cannot send an Authorization header, so the
// stream is read from a ReadableStream. Resumes after any break with Last-Event-ID, so no
// transition is missed; waits the server's `retry` (then backs off, up to 15 s).

import { authHeaders } from "./api.js";

export class EventStream {
  constructor(url, { onEvent, onState, lastEventId = null }) {
    this.url = url;
    this.onEvent = onEvent;
    this.onState = onState || (() => {});
    this.lastEventId = lastEventId;
    this.retryMs = 1000;
    this.failures = 0;
    this.stopped = false;
    this.controller = null;
    this.timer = null;
  }

  start() {
    this.stopped = false;
    this.connect();
    return this;
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.controller) this.controller.abort();
    this.onState("closed");
  }

  async connect() {
    if (this.stopped) return;
    this.controller = new AbortController();
    this.onState("connecting");
    const headers = authHeaders({ Accept: "text/event-stream" });
    if (this.lastEventId !== null) headers.set("Last-Event-ID", String(this.lastEventId));
    try {
      const res = await fetch(this.url, { headers, signal: this.controller.signal,
        cache: "no-store" });
      if (res.status === 401 || res.status === 403) {
        this.onState("denied", res.status);
        this.stopped = true;
        return;
      }
      if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
      this.failures = 0;
      this.onState("open");
      await this.read(res.body.getReader());
      if (!this.stopped) this.schedule("ended");
    } catch (e) {
      if (this.stopped || (e && e.name === "AbortError")) return;
      this.failures += 1;
      this.schedule("error");
    }
  }

  schedule(why) {
    if (this.stopped) return;
    const wait = Math.min(this.retryMs * 2 ** Math.max(0, this.failures - 1), 15000);
    this.onState("reconnecting", wait, why);
    this.timer = setTimeout(() => this.connect(), wait);
  }

  async read(reader) {
    const decoder = new TextDecoder("utf-8");
    let buffer = "";
    let ev = { data: [], event: "message", id: null };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buffer.search(/\r\n|\r|\n/)) >= 0) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + (buffer.startsWith("\r\n", nl) ? 2 : 1));
        if (line === "") {
          if (ev.id !== null) this.lastEventId = ev.id;
          if (ev.data.length) {
            this.onEvent({ type: ev.event, id: ev.id ?? this.lastEventId,
              data: ev.data.join("\n") });
          }
          ev = { data: [], event: "message", id: null };
          continue;
        }
        if (line.startsWith(":")) continue; // comment: keep-alive
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? "" : line.slice(colon + 1);
        if (val.startsWith(" ")) val = val.slice(1);
        if (field === "data") ev.data.push(val);
        else if (field === "event") ev.event = val;
        else if (field === "id" && !val.includes("\0")) ev.id = val;
        else if (field === "retry" && /^\d+$/.test(val)) this.retryMs = Number(val);
      }
    }
  }
}
