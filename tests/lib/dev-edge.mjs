// The edge (the real WASM build in workerd via Miniflare) for local development, in front of local
// origins. Started by scripts/dev; runs until SIGTERM/SIGINT.
//
//   EDGE_SIGNING_SECRET=... ORIGIN_URL=http://127.0.0.1:8080 EDGE_PORT=8787 node tests/lib/dev-edge.mjs
//   EDGE_SIGNING_SECRET=... ORIGINS='{"eu":"http://127.0.0.1:8080","us":"http://127.0.0.1:8081"}' \
//     DEFAULT_REGION=eu EDGE_PORT=8787 node tests/lib/dev-edge.mjs
//
// Vars and rate limits are wrangler.toml's default environment, read with wrangler's own parser
// (the same config `wrangler dev` would use), with ORIGINS replaced by $ORIGINS when set, else by
// {"eu": ORIGIN_URL}, and DEFAULT_REGION by $DEFAULT_REGION when set.
// The worker's log lines (one JSON line per request) go to stdout.
import { createRequire } from "node:module";
import path from "node:path";

// Registered before Miniflare is loaded: its own exit hook (which also stops workerd) runs after ours.
let edge;
let stopping = false;
async function stop(signal) {
  if (stopping) return;
  stopping = true;
  console.log(JSON.stringify({ level: "info", msg: "edge stopping", signal }));
  const force = setTimeout(() => process.exit(1), 5000);
  force.unref();
  try {
    await edge?.dispose();
  } finally {
    process.exit(0);
  }
}
process.on("SIGTERM", () => void stop("SIGTERM"));
process.on("SIGINT", () => void stop("SIGINT"));

const { REPO_ROOT, startEdge } = await import("./edge.mjs");

const { EDGE_SIGNING_SECRET, ORIGIN_URL = "http://127.0.0.1:8080", EDGE_PORT = "8787" } = process.env;
const ORIGINS = process.env.ORIGINS || JSON.stringify({ eu: ORIGIN_URL });
const fail = (msg) => {
  console.error(`dev-edge: ${msg}`);
  process.exit(2);
};
if (!EDGE_SIGNING_SECRET) fail("EDGE_SIGNING_SECRET is not set (the origin's ALLOT_EDGE_SECRETS)");
const port = Number(EDGE_PORT);
if (!Number.isInteger(port) || port < 1 || port > 65535) fail(`EDGE_PORT=${EDGE_PORT} is not a port`);

const require = createRequire(import.meta.url);
const { unstable_getMiniflareWorkerOptions } = require("wrangler");
const { workerOptions } = unstable_getMiniflareWorkerOptions(path.join(REPO_ROOT, "wrangler.toml"));
const ratelimits = Object.fromEntries(
  Object.entries(workerOptions.ratelimits ?? {}).map(([name, rl]) => [name, { simple: rl.simple }]),
);

const defaultRegion = process.env.DEFAULT_REGION ? { DEFAULT_REGION: process.env.DEFAULT_REGION } : {};
edge = await startEdge({
  bindings: { ...workerOptions.bindings, ORIGINS, ...defaultRegion, EDGE_SIGNING_SECRET },
  ratelimits,
  logs: (line) => console.log(line),
  miniflare: { port },
});
console.log(
  JSON.stringify({
    level: "info",
    msg: "edge listening",
    url: edge.url.toString(),
    origins: JSON.parse(ORIGINS),
    startup_ms: Math.round(edge.startupMs),
  }),
);
