// A real `allot server` for end-to-end tests and figures, on its own throwaway database:
// CREATE DATABASE e2e_<random> on the stack's Postgres, `allot migrate up`, `allot demo seed`, then
// `allot server` on free 127.0.0.1 ports. Needs the stack (scripts/stack up) and its env:
//   eval "$(scripts/stack env)"      -> DATABASE_URL, VALKEY_URL
//
//   const origin = await startOrigin({ cardsPerDenomination: 100 });
//   origin.url, origin.key (demo API key), origin.secret (ALLOT_EDGE_SECRETS), origin.sql("SELECT 1")
//   await origin.stop();             // SIGTERM the server, DROP the database
//
// A second instance on the same database and cache (same card keys, edge secret and key prefix;
// its own ports), here both as `allot run-all` (API, relay and scheduler in each):
//   const a = await startOrigin({ command: "run-all" });
//   const b = await startOrigin({ command: "run-all", join: a });
//   await b.kill();                  // SIGKILL, as a crash
//   await b.stop(); await a.stop();  // a joined instance never drops the database: stop it first
//
// The binary: $ALLOT_BIN, else $CARGO_TARGET_DIR/debug/allot, else target/debug/allot.
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { REPO_ROOT } from "./edge.mjs";
import { freePort, randomHex } from "./allot.mjs";

export const ALLOT_BIN =
  process.env.ALLOT_BIN ||
  path.join(path.resolve(REPO_ROOT, process.env.CARGO_TARGET_DIR || "target"), "debug", "allot");

/** DATABASE_URL and VALKEY_URL, or a clear error saying how to get them. */
export function stackEnv() {
  const { DATABASE_URL, VALKEY_URL } = process.env;
  const missing = ["DATABASE_URL", "VALKEY_URL"].filter((k) => !process.env[k]);
  if (missing.length) {
    throw new Error(
      `end-to-end tests need the stack, but ${missing.join(" and ")} ${missing.length > 1 ? "are" : "is"} not set. ` +
        'Run: scripts/stack up && eval "$(scripts/stack env)" (scripts/test does this), then npm test --prefix tests.',
    );
  }
  return { DATABASE_URL, VALKEY_URL };
}

/** Build target/debug/allot when it is missing (scripts/test builds it before the node tests). */
export function ensureAllotBinary() {
  if (existsSync(ALLOT_BIN)) return ALLOT_BIN;
  if (process.env.ALLOT_BIN) throw new Error(`ALLOT_BIN=${process.env.ALLOT_BIN} does not exist`);
  const r = spawnSync("cargo", ["build", "-q", "-p", "allot-origin"], { cwd: REPO_ROOT, stdio: "inherit" });
  if (r.status !== 0 || !existsSync(ALLOT_BIN)) {
    throw new Error(`cargo build -p allot-origin failed (exit ${r.status}); ${ALLOT_BIN} is missing`);
  }
  return ALLOT_BIN;
}

function run(bin, args, env) {
  try {
    return execFileSync(bin, args, { env, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
  } catch (err) {
    throw new Error(`${path.basename(bin)} ${args.join(" ")} failed: ${err.stderr || err.message}`);
  }
}

/** Run SQL on a database URL with psql; returns the unaligned, tuples-only output. */
export function psql(url, sql) {
  return run("psql", [url, "-v", "ON_ERROR_STOP=1", "-qAtc", sql], process.env).trim();
}

async function waitReady(url, child, logs, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) {
      throw new Error(`allot server exited with ${child.exitCode}:\n${logs.slice(-20).join("\n")}`);
    }
    try {
      const res = await fetch(`${url}/readyz`);
      await res.arrayBuffer();
      if (res.status === 200) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`allot server not ready at ${url} after ${timeoutMs} ms:\n${logs.slice(-20).join("\n")}`);
}

/**
 * @param {object} [opts]
 * @param {number} [opts.cardsPerDenomination]  `allot demo seed --cards-per-denomination` (default 100)
 * @param {string} [opts.catalogue]             `allot demo seed --catalogue` (default: the seed's default)
 * @param {string} [opts.region]                `ALLOT_REGION` (default eu); the demo key is of this region
 * @param {"server"|"run-all"} [opts.command]   what to run (default server)
 * @param {object} [opts.join]                  an origin returned by startOrigin: run another instance on
 *                                              its database and cache (same env but the ports), seed nothing
 * @param {string} [opts.secret]                `ALLOT_EDGE_SECRETS` (default random): origins behind one edge share it
 * @param {string} [opts.setupSql]              SQL run on the new database after the seed, before the start
 * @param {Record<string,string>} [opts.env]    extra environment for the server
 * @param {string} [opts.bin]                   the `allot` binary (default target/debug/allot, built if missing)
 */
export async function startOrigin(opts = {}) {
  const { DATABASE_URL, VALKEY_URL } = stackEnv();
  const bin = opts.bin ?? opts.join?.bin ?? ensureAllotBinary();
  const command = opts.command ?? "server";
  const joined = opts.join;
  const dbName = joined ? joined.dbName : `e2e_${randomHex(6)}`;
  if (!joined) psql(DATABASE_URL, `CREATE DATABASE ${dbName}`);
  const dbUrl = new URL(DATABASE_URL);
  dbUrl.pathname = `/${dbName}`;
  const port = await freePort();
  const operatorPort = await freePort();
  const secret = joined ? joined.secret : (opts.secret ?? randomHex(24));
  const baseEnv = { ...process.env };
  delete baseEnv.ALLOT_CONFIG_FILE;
  const env = joined
    ? { ...joined.env, ...opts.env }
    : {
        ...baseEnv,
        DATABASE_URL: dbUrl.toString(),
        VALKEY_URL,
        ALLOT_REGION: opts.region ?? "eu",
        ALLOT_VALKEY_PREFIX: `e2e_${randomHex(6)}`,
        ALLOT_EDGE_SECRETS: secret,
        ALLOT_LOG_FORMAT: "json",
        ...opts.env,
      };
  env.ALLOT_LISTEN = `127.0.0.1:${port}`;
  env.ALLOT_OPERATOR_LISTEN = `127.0.0.1:${operatorPort}`;
  let child;
  const dropDb = () => {
    if (joined) return; // the first instance owns the database
    try {
      psql(DATABASE_URL, `DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`);
    } catch {
      // best effort
    }
  };
  try {
    let key = joined?.key;
    let clientId = joined?.clientId;
    if (!joined) {
      env.ALLOT_CARD_KEYS = run(bin, ["keygen", "--key-id", "e2e"], env).trim();
      run(bin, ["migrate", "up"], env);
      const seedArgs = ["demo", "seed", "--cards-per-denomination", String(opts.cardsPerDenomination ?? 100)];
      if (opts.catalogue) seedArgs.push("--catalogue", opts.catalogue);
      const seed = run(bin, seedArgs, env);
      key = /^demo API key \(shown once\): (\S+)$/m.exec(seed)?.[1];
      if (!key) throw new Error(`no demo API key in the seed's output:\n${seed}`);
      clientId = /^demo client: (\S+)$/m.exec(seed)?.[1];
      if (opts.setupSql) psql(dbUrl.toString(), opts.setupSql);
    }

    /** @type {string[]} */
    const logs = [];
    child = spawn(bin, [command], { env, stdio: ["ignore", "pipe", "pipe"] });
    const exited = new Promise((resolve) => child.once("close", resolve));
    for (const stream of [child.stdout, child.stderr]) {
      let rest = "";
      stream.setEncoding("utf8");
      stream.on("data", (chunk) => {
        const lines = (rest + chunk).split("\n");
        rest = lines.pop();
        logs.push(...lines);
      });
      // The last line before exit may lack its newline (a panic, a flush at shutdown).
      stream.on("end", () => {
        if (rest) logs.push(rest);
        rest = "";
      });
    }
    const url = `http://127.0.0.1:${port}`;
    await waitReady(url, child, logs);

    let stopped = false;
    return {
      url,
      port,
      bin,
      dbName,
      /** The child's pid. */
      pid: child.pid,
      /** The operator listener (health, metrics, the operator API and the console). */
      operatorUrl: `http://127.0.0.1:${operatorPort}`,
      key,
      clientId,
      secret,
      dbUrl: dbUrl.toString(),
      env,
      /** Every line the server wrote to stdout and stderr, complete once stop() has returned. */
      logs,
      /** Run SQL on this origin's database. */
      sql: (q) => psql(dbUrl.toString(), q),
      /** Run an `allot` operator command against this origin's database; its last output line. */
      cli: (args) => run(bin, args, env).trim().split("\n").pop().trim(),
      /** A new operator's token (`allot operator create`), shown once. */
      operatorToken: (role, name = `test ${role}`) => {
        const out = run(bin, ["operator", "create", "--name", name, "--role", role], env);
        const token = /^token \(shown once\): (\S+)$/m.exec(out)?.[1];
        if (!token) throw new Error(`no token in the output of allot operator create:\n${out}`);
        return token;
      },
      /** Issue another API key for the demo client. */
      issueKey: () => {
        // The command's stdout may carry log lines (RUST_LOG) besides the key.
        const out = run(bin, ["key", "issue", "--client", clientId], env);
        const key = out
          .split("\n")
          .map((l) => l.trim())
          .findLast((l) => /^allot_\S+$/.test(l));
        if (!key) throw new Error(`no API key in the output of allot key issue:\n${out}`);
        return key;
      },
      /** SIGKILL the process (a crash: no drain, no goodbye) and wait for it to be gone. */
      async kill() {
        if (child.exitCode === null && child.signalCode === null) {
          child.kill("SIGKILL");
          await exited;
        }
      },
      async stop() {
        if (stopped) return;
        stopped = true;
        if (child.exitCode === null && child.signalCode === null) {
          child.kill("SIGTERM");
          const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
          await exited;
          clearTimeout(timer);
        }
        dropDb();
      },
    };
  } catch (err) {
    if (child && child.exitCode === null) child.kill("SIGKILL");
    dropDb();
    throw err;
  }
}
