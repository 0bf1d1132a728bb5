// Run the built edge worker (edge/build: index.js + index_bg.wasm, made by scripts/edge-build) in
// Miniflare 4 (workerd) for Node tests. Builds nothing: call scripts/edge-build first.
//
//   import { startEdge } from "./lib/edge.mjs";
//   const edge = await startEdge({ bindings: { ORIGINS: JSON.stringify({ eu: origin.url }) } });
//   const res = await edge.fetch("/healthz", { method: "GET", cf: { country: "US" } });
//   edge.logs   // the worker's console.log lines, parsed when JSON (collected, not printed)
//   await edge.dispose();
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import path from "node:path";

// Without a `cf` option Miniflare downloads cf.json from the internet (slow, and offline here).
// We always pass `cf`, and this env var turns the download off for anything else.
process.env.CLOUDFLARE_CF_FETCH_ENABLED ??= "false";
const { Miniflare } = await import("miniflare");

export const REPO_ROOT = fileURLToPath(new URL("../../", import.meta.url));
export const EDGE_BUILD_DIR = path.join(REPO_ROOT, "edge", "build");
export const EDGE_SCRIPT = path.join(EDGE_BUILD_DIR, "index.js");

/** Mirrors wrangler.toml (default env); edge-smoke.test.mjs checks they stay equal. */
export const COMPATIBILITY_DATE = "2026-04-20";

/** [vars] of wrangler.toml's default env, plus a test value for the EDGE_SIGNING_SECRET secret. */
export const DEFAULT_BINDINGS = Object.freeze({
  ORIGINS: JSON.stringify({ eu: "http://127.0.0.1:8080" }),
  DEFAULT_REGION: "eu",
  MAX_QUANTITY: "20",
  MAX_BODY_BYTES: "16384",
  RL_KEY_LIMIT: "100",
  RL_KEY_PERIOD: "60",
  RL_AUTH_FAIL_LIMIT: "20",
  RL_AUTH_FAIL_PERIOD: "60",
  ORIGIN_TIMEOUT_MS: "10000",
  BODY_TIMEOUT_MS: "10000",
  EDGE_SIGNING_SECRET: "test-edge-signing-secret",
});

/** [[ratelimits]] of wrangler.toml's default env, in Miniflare's shape. period: 10 or 60. */
export const DEFAULT_RATELIMITS = Object.freeze({
  RL_KEY_DEFAULT: { simple: { limit: 100, period: 60 } },
  RL_AUTH_FAIL_IP: { simple: { limit: 20, period: 60 } },
});

/**
 * Default `request.cf`. Fill every field workers-rs' `Cf` getters unwrap (colo, httpProtocol, tlsVersion,
 * ...): a missing one panics inside the worker instead of returning None.
 */
export const DEFAULT_CF = Object.freeze({
  colo: "FRA",
  country: "DE",
  continent: "EU",
  city: "Frankfurt am Main",
  region: "Hesse",
  regionCode: "HE",
  postalCode: "60313",
  latitude: "50.11090",
  longitude: "8.68213",
  timezone: "Europe/Berlin",
  asn: 64496,
  asOrganization: "allot tests",
  clientTcpRtt: 1,
  httpProtocol: "HTTP/1.1",
  tlsVersion: "TLSv1.3",
  tlsCipher: "AEAD-AES128-GCM-SHA256",
  requestPriority: "",
  edgeRequestKeepAliveStatus: 1,
});

/** Throws a clear error when the worker has not been built. */
export function assertEdgeBuilt() {
  const wasm = path.join(EDGE_BUILD_DIR, "index_bg.wasm");
  if (!existsSync(EDGE_SCRIPT) || !existsSync(wasm)) {
    throw new Error(
      `edge worker not built: ${path.relative(REPO_ROOT, EDGE_SCRIPT)} or index_bg.wasm is missing. ` +
        "Run scripts/edge-build (after scripts/edge-toolchain) first.",
    );
  }
}

/**
 * An edge in front of a real origin (`tests/lib/origin-process.mjs`) for region eu, signing with its
 * secret, with a per-key limit high enough that a test's own load never meets it. `opts` as startEdge's.
 * Given a list of origins (instances on one database), ORIGINS.eu lists them all, in that order.
 */
export function startEdgeInFront(origin, opts = {}) {
  const instances = Array.isArray(origin) ? origin : [origin];
  const bindings = {
    ORIGINS: JSON.stringify({ eu: Array.isArray(origin) ? instances.map((o) => o.url) : origin.url }),
    EDGE_SIGNING_SECRET: instances[0].secret,
    RL_KEY_LIMIT: "100000",
  };
  return startEdge({
    ...opts,
    bindings: { ...bindings, ...opts.bindings },
    ratelimits: { ...DEFAULT_RATELIMITS, RL_KEY_DEFAULT: { simple: { limit: 100000, period: 60 } } },
  });
}

/**
 * Start Miniflare on edge/build.
 *
 * @param {object} [opts]
 * @param {Record<string, unknown>} [opts.bindings]  merged over DEFAULT_BINDINGS (vars/secrets; JSON values allowed)
 * @param {Record<string, {simple: {limit: number, period?: 10|60}}>} [opts.ratelimits]  replaces DEFAULT_RATELIMITS
 * @param {Record<string, unknown>} [opts.cf]  merged over DEFAULT_CF; the default `cf` of every request
 * @param {string} [opts.baseUrl]  URL the worker sees for relative paths (default https://edge.allot.test)
 * @param {object} [opts.miniflare]  extra Miniflare options (durableObjects, compatibilityFlags, port, ...)
 * @param {boolean | ((line: string) => void)} [opts.logs]  what to do with the worker's log lines:
 *   collect them in `edge.logs` (default), or pass a function to receive each line, or `false` to
 *   let Miniflare print them
 * @returns {Promise<{mf: Miniflare, url: URL, startupMs: number, logs: Array<object|string>, fetch: (path: string, init?: object) => Promise<Response>, dispose: () => Promise<void>}>}
 */
export async function startEdge(opts = {}) {
  assertEdgeBuilt();
  const cf = { ...DEFAULT_CF, ...opts.cf };
  const baseUrl = opts.baseUrl ?? "https://edge.allot.test";
  const started = performance.now();
  /** @type {Array<object|string>} */
  const logs = [];
  const onLine = typeof opts.logs === "function" ? opts.logs : (line) => void logs.push(parseLine(line));
  const logOptions = opts.logs === false ? {} : { handleStructuredLogs: ({ message }) => void onLine(message) };
  const mf = new Miniflare({
    modules: true,
    scriptPath: EDGE_SCRIPT,
    // Module names are paths relative to modulesRoot (default: process.cwd()). From tests/ they would
    // start with "../" and workerd refuses them ("can't use '..' to break out of starting directory").
    modulesRoot: EDGE_BUILD_DIR,
    modulesRules: [{ type: "CompiledWasm", include: ["**/*.wasm"], fallthrough: true }],
    compatibilityDate: COMPATIBILITY_DATE,
    bindings: { ...DEFAULT_BINDINGS, ...opts.bindings },
    ratelimits: opts.ratelimits ?? DEFAULT_RATELIMITS,
    cf,
    host: "127.0.0.1",
    port: 0,
    ...logOptions,
    ...opts.miniflare,
  });
  let url;
  try {
    url = await mf.ready;
  } catch (err) {
    await mf.dispose().catch(() => {});
    throw err;
  }
  const startupMs = performance.now() - started;

  let disposed = false;
  return {
    mf,
    /** Where Miniflare listens (127.0.0.1, `miniflare.port` or a free port). */
    url,
    startupMs,
    logs,
    /**
     * dispatchFetch with a path relative to baseUrl (or an absolute URL). `init.cf` is merged over the
     * default cf. Bodies must be consumed (or cancelled) by the caller.
     */
    fetch(pathOrUrl, init = {}) {
      const url = new URL(pathOrUrl, baseUrl);
      return mf.dispatchFetch(url, { redirect: "manual", ...init, cf: { ...cf, ...init.cf } });
    },
    async dispose() {
      if (disposed) return;
      disposed = true;
      await mf.dispose();
    },
  };
}

function parseLine(line) {
  try {
    return JSON.parse(line);
  } catch {
    return line;
  }
}
