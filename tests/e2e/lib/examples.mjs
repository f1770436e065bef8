// Runs the examples under examples/ the way their READMEs tell a person to.
//
// Each `examples/<name>/README.md` has, as its first ```sh block, the one
// command that starts the example (run from the repository root). The
// example is configured by environment variables only:
//
//   HERALD_URL         Herald's base URL (the page loads `${HERALD_URL}/herald.js`)
//   HERALD_JWT_SECRET  the HMAC secret the backend signs subscriber tokens with
//                      (the same value Herald is started with: `--jwt-secret`)
//   HERALD_API_KEY     the key the backend publishes with (Herald: `--api-key KEY;publish=*`)
//   PORT               the port the example's backend listens on
//
// `startExampleHerald()` starts the real `herald` binary in token mode with
// the secret and key the examples default to, and returns the environment to
// hand to `startExample()`, which runs the README's command as written (with
// bash, in its own process group, so stop() ends whatever it started) on a
// free port and waits until it answers HTTP. `screenshot()` saves a PNG under
// tests/e2e/artifacts/ (gitignored) for a person to look at after a run.
//
// Nothing here mocks anything: the browser talks to the example's backend
// and to Herald, and the backend talks to Herald over HTTP.

import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { startHerald, sleep, freePort } from './server.mjs';

/** The repository root (where the READMEs' commands are run from). */
export const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url));

/** Where screenshots go (gitignored). */
export const ARTIFACTS_DIR = fileURLToPath(new URL('../artifacts/', import.meta.url));

/** The subscriber-token secret the examples default to (at least 16 bytes, as Herald requires). */
export const EXAMPLE_JWT_SECRET = 'herald-examples-secret-change-me';

/** The publishing API key the examples default to. */
export const EXAMPLE_API_KEY = 'herald-examples-publish-key';

const running = new Set();
process.on('exit', () => {
  for (const proc of running) killGroup(proc, 'SIGKILL');
});

function killGroup(proc, signal) {
  try { process.kill(-proc.pid, signal); } catch { /* already gone */ }
}

// A timer that does not keep the test process alive.
const idle = (ms) => new Promise((r) => setTimeout(r, ms, null).unref());

/**
 * Starts Herald in token mode (no `--dev`, in memory, free port) accepting the
 * examples' secret and key: `--jwt-secret EXAMPLE_JWT_SECRET --api-key
 * 'EXAMPLE_API_KEY;publish=*' --retry-ms 500 ...extraArgs`.
 * Returns startHerald's handle plus `env`: the HERALD_* variables for
 * startExample().
 */
export async function startExampleHerald(extraArgs = [], options = {}) {
  const herald = await startHerald([
    '--jwt-secret', EXAMPLE_JWT_SECRET,
    '--api-key', `${EXAMPLE_API_KEY};publish=*;admin;name=examples`,
    '--retry-ms', '500',
    ...extraArgs,
  ], { ...options, dev: false });
  herald.env = {
    HERALD_URL: herald.url,
    HERALD_JWT_SECRET: EXAMPLE_JWT_SECRET,
    HERALD_API_KEY: EXAMPLE_API_KEY,
  };
  return herald;
}

/** The first ```sh block of examples/<name>/README.md: the command that starts it. */
export function exampleCommand(name) {
  const readme = readFileSync(join(REPO_ROOT, 'examples', name, 'README.md'), 'utf8');
  const m = /^```sh\n([\s\S]*?)^```/m.exec(readme);
  if (!m) throw new Error(`examples/${name}/README.md has no \`\`\`sh block`);
  const command = m[1].trim();
  if (!command) throw new Error(`examples/${name}/README.md: its first \`\`\`sh block is empty`);
  return command;
}

/** A port nobody listens on right now (the OS picks it). */
/**
 * Runs examples/<name>'s README command (bash -c, cwd = repository root) with
 * process.env + `env` + PORT=<a free port>, and waits (up to startTimeoutMs)
 * until `GET http://127.0.0.1:PORT/` answers. Returns
 * {url, port, command, proc, stop(), output(), exited()}; stop() sends
 * SIGTERM to the example's process group, then SIGKILL.
 */
export async function startExample(name, { env = {}, startTimeoutMs = 20_000 } = {}) {
  const command = exampleCommand(name);
  const port = await freePort();
  const proc = spawn('bash', ['-c', command], {
    cwd: REPO_ROOT,
    env: { ...process.env, ...env, PORT: String(port) },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true, // its own process group: stop() reaches whatever the command starts
  });
  running.add(proc);
  let log = '';
  const keep = (chunk) => {
    log += chunk.toString('utf8');
    if (log.length > 64 * 1024) log = log.slice(-64 * 1024); // bounded
  };
  proc.stdout.on('data', keep);
  proc.stderr.on('data', keep);
  let exited = null;
  const exitPromise = new Promise((resolve) => {
    proc.once('exit', (code, signal) => {
      exited = { code, signal };
      running.delete(proc);
      resolve(exited);
    });
  });

  async function stop() {
    if (exited) return exited;
    killGroup(proc, 'SIGTERM');
    const res = await Promise.race([exitPromise, idle(5_000)]);
    if (res) return res;
    killGroup(proc, 'SIGKILL');
    return Promise.race([exitPromise, idle(5_000)]);
  }

  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + startTimeoutMs;
  for (;;) {
    if (exited) {
      throw new Error(`example ${name} exited before it listened (code=${exited.code}, signal=${exited.signal}); command: ${command}\n--- output ---\n${log}`);
    }
    try {
      const res = await fetch(url + '/', { signal: AbortSignal.timeout(2_000) });
      await res.arrayBuffer();
      break;
    } catch { /* not listening yet */ }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`example ${name} did not answer on ${url} within ${startTimeoutMs} ms; command: ${command}\n--- output ---\n${log}`);
    }
    await sleep(100);
  }
  return { url, port, command, proc, stop, output: () => log, exited: () => exited };
}

/**
 * Saves a full-page PNG of `page` as tests/e2e/artifacts/<name>.png and
 * returns its path.
 */
export async function screenshot(page, name) {
  mkdirSync(ARTIFACTS_DIR, { recursive: true });
  const path = join(ARTIFACTS_DIR, `${name.replace(/[^\w.-]+/g, '-')}.png`);
  await page.screenshot({ path, fullPage: true });
  return path;
}
