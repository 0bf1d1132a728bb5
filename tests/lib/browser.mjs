// Debian's Chromium, headless, driven by puppeteer-core (which never downloads a browser).
// scripts/install-deps installs the `chromium` package; ALLOT_CHROMIUM overrides the path.
//
//   const browser = await launchBrowser();
//   const page = await browser.newPage();   ...   await browser.close();
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import puppeteer from "puppeteer-core";

export const CHROMIUM = process.env.ALLOT_CHROMIUM ?? "/usr/bin/chromium";

/** Chromium with a fresh profile that is removed on close; no network beyond loopback is tried. */
export async function launchBrowser() {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`no Chromium at ${CHROMIUM}: run scripts/install-deps (it installs Debian's chromium package)`);
  }
  const profile = await mkdtemp(path.join(os.tmpdir(), "allot-chromium-"));
  const args = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--lang=en-US",
  ];
  // Chromium's sandbox refuses to start as root (CI machines run tests as root).
  if (process.getuid?.() === 0) args.push("--no-sandbox");
  const browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    userDataDir: profile,
    args,
    defaultViewport: { width: 1280, height: 800 },
  });
  const close = browser.close.bind(browser);
  browser.close = async () => {
    await close();
    await rm(profile, { recursive: true, force: true });
  };
  return browser;
}
