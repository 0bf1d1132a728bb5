// A tiny HTTP origin for end-to-end tests: listens on 127.0.0.1 (random port), records every request
// and answers with a configurable status / headers / body / delay.
//
//   const origin = await startRecordingOrigin();            // answers 200 "ok"
//   origin.respond({ status: 503, body: "down", delayMs: 200 });
//   origin.respond((req) => ({ status: 200, body: JSON.stringify({ echo: req.url }) }));
//   ... origin.requests[0].method / .url / .headers / .body (Buffer) / .text() / .json()
//   await origin.close();
import http from "node:http";
import { once } from "node:events";

/**
 * @typedef {{status?: number, headers?: Record<string, string>, body?: string | Uint8Array | object, delayMs?: number}} Reply
 *   body: string/bytes as is; a plain object is sent as JSON.
 * @typedef {{method: string, url: string, headers: Record<string, string | string[]>, rawHeaders: string[], body: Buffer, receivedAt: number, text(): string, json(): any}} RecordedRequest
 */

/** @param {Reply | ((req: RecordedRequest) => Reply | Promise<Reply>)} [initial] */
export async function startRecordingOrigin(initial = { status: 200, body: "ok" }) {
  /** @type {RecordedRequest[]} */
  const requests = [];
  let reply = initial;
  const waiters = new Set();

  const server = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const body = Buffer.concat(chunks);
    const recorded = {
      method: req.method,
      url: req.url,
      headers: { ...req.headers },
      rawHeaders: [...req.rawHeaders],
      body,
      receivedAt: Date.now(),
      text: () => body.toString("utf8"),
      json: () => JSON.parse(body.toString("utf8")),
    };
    requests.push(recorded);
    for (const w of waiters) w.check();

    try {
      const r = (typeof reply === "function" ? await reply(recorded) : reply) ?? {};
      if (r.delayMs) await new Promise((resolve) => setTimeout(resolve, r.delayMs));
      let payload = r.body ?? "";
      const headers = { ...r.headers };
      if (typeof payload === "object" && !(payload instanceof Uint8Array)) {
        payload = JSON.stringify(payload);
        headers["content-type"] ??= "application/json";
      }
      if (res.destroyed) return; // client gave up (e.g. edge timeout)
      res.writeHead(r.status ?? 200, headers);
      res.end(payload);
    } catch (err) {
      if (!res.headersSent) res.writeHead(500, { "content-type": "text/plain" });
      res.end(`recording-origin handler failed: ${err?.stack ?? err}`);
    }
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address();

  return {
    port,
    /** Base URL, e.g. http://127.0.0.1:41234 (no trailing slash). */
    url: `http://127.0.0.1:${port}`,
    requests,
    /** Change the reply for subsequent requests. */
    respond(next) {
      reply = next;
    },
    /** Forget recorded requests (keeps the reply). */
    reset() {
      requests.length = 0;
    },
    /** Resolve once at least `n` requests were recorded; reject after timeoutMs. */
    waitForRequests(n, timeoutMs = 2000) {
      return new Promise((resolve, reject) => {
        const w = {
          check() {
            if (requests.length >= n) {
              clearTimeout(timer);
              waiters.delete(w);
              resolve(requests.slice(0, n));
            }
          },
        };
        const timer = setTimeout(() => {
          waiters.delete(w);
          reject(new Error(`recording origin: ${requests.length}/${n} requests after ${timeoutMs} ms`));
        }, timeoutMs);
        waiters.add(w);
        w.check();
      });
    },
    async close() {
      server.closeAllConnections();
      server.close();
      await once(server, "close").catch(() => {});
    },
  };
}
