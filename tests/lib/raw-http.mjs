// HTTP/1.1 over a raw socket, for what fetch and node:http will not send: a body that stops
// half-way and holds the connection open, a body cut off by the client, a header sent twice
// exactly as written.
//
//   const res = await rawRequest(edge.url, {
//     method: "POST", path: "/v1/allocations",
//     headers: [["authorization", "Bearer ..."], ["content-length", "100"]],   // sent in this order, repeats kept
//     body: '{"product_id"',            // written after the head
//     then: "hold",                     // "hold" (keep the socket open, send nothing more), "end" (half-close), "done"
//   });
//   rawRequest(url, { ..., pieces: ["a", "b"], gapMs: 100 })   // the body written in pieces, gapMs apart
//   res.status, res.headers (lower-case names; repeats joined with ", "), res.body (Buffer), res.json(), res.ms
import net from "node:net";

/**
 * @param {string | URL} base  http://host:port
 * @param {{method?: string, path?: string, headers?: Array<[string, string]>, body?: string | Buffer,
 *          pieces?: Array<string | Buffer>, gapMs?: number, then?: "hold" | "end" | "done", timeoutMs?: number}} opts
 * @returns {Promise<{status: number, headers: Record<string, string>, body: Buffer, text: () => string, json: () => any, ms: number}>}
 */
export function rawRequest(
  base,
  { method = "GET", path = "/", headers = [], body, pieces = [], gapMs = 0, then = "done", timeoutMs = 30_000 } = {},
) {
  const url = new URL(base);
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const sock = net.connect(Number(url.port), url.hostname);
    let buf = Buffer.alloc(0);
    let settled = false;
    const finish = (err, value) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      if (err) reject(err);
      else resolve(value);
    };
    const timer = setTimeout(
      () =>
        finish(
          new Error(`raw ${method} ${path}: no complete response after ${timeoutMs} ms (got ${buf.length} bytes)`),
        ),
      timeoutMs,
    );
    sock.on("error", (err) => finish(err));
    sock.on("data", (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      const parsed = parseResponse(buf);
      if (parsed) finish(null, { ...parsed, ms: performance.now() - started });
    });
    sock.on("end", () => {
      const parsed = parseResponse(buf, true);
      if (parsed) finish(null, { ...parsed, ms: performance.now() - started });
      else
        finish(
          new Error(
            `raw ${method} ${path}: connection closed after ${buf.length} bytes: ${buf.toString("latin1").slice(0, 200)}`,
          ),
        );
    });
    sock.on("connect", async () => {
      const head = [`${method} ${path} HTTP/1.1`, `host: ${url.host}`, ...headers.map(([n, v]) => `${n}: ${v}`)];
      sock.write(`${head.join("\r\n")}\r\n\r\n`, "latin1");
      if (body !== undefined) sock.write(body);
      for (const piece of pieces) {
        if (settled) return;
        await new Promise((r) => setTimeout(r, gapMs));
        if (settled) return;
        sock.write(piece);
      }
      if (then === "end") sock.end();
    });
  });
}

/** A whole response in `buf`, or null when more bytes are needed. */
function parseResponse(buf, eof = false) {
  const headEnd = buf.indexOf("\r\n\r\n");
  if (headEnd < 0) return null;
  const [statusLine, ...lines] = buf.subarray(0, headEnd).toString("latin1").split("\r\n");
  const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(statusLine)?.[1]);
  /** @type {Record<string, string>} */
  const headers = {};
  for (const line of lines) {
    const i = line.indexOf(":");
    const name = line.slice(0, i).trim().toLowerCase();
    const value = line.slice(i + 1).trim();
    headers[name] = name in headers ? `${headers[name]}, ${value}` : value;
  }
  let rest = buf.subarray(headEnd + 4);
  let body;
  if (headers["content-length"] !== undefined) {
    const n = Number(headers["content-length"]);
    if (rest.length < n) return null;
    body = rest.subarray(0, n);
  } else if (/chunked/i.test(headers["transfer-encoding"] ?? "")) {
    const parts = [];
    for (;;) {
      const lineEnd = rest.indexOf("\r\n");
      if (lineEnd < 0) return null;
      const size = parseInt(rest.subarray(0, lineEnd).toString("latin1"), 16);
      if (rest.length < lineEnd + 2 + size + 2) return null;
      if (size === 0) break;
      parts.push(rest.subarray(lineEnd + 2, lineEnd + 2 + size));
      rest = rest.subarray(lineEnd + 2 + size + 2);
    }
    body = Buffer.concat(parts);
  } else if (status === 204 || status === 304) {
    body = Buffer.alloc(0);
  } else {
    if (!eof) return null;
    body = rest;
  }
  return {
    status,
    headers,
    body: Buffer.from(body),
    text: () => body.toString("utf8"),
    json: () => JSON.parse(body.toString("utf8")),
  };
}
