// The command line: `herald serve` configuration (validated before any port
// is bound, exit 64 naming the option and its source; flags > env > file),
// `herald publish` and `herald subscribe` (which resumes with Last-Event-ID
// and, with --count N, exits 0 after N events not counting herald.* ones).

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { heraldBin, startHerald, openRaw, request, publishOk, pollUntil, stats } from './lib/server.mjs';

const dir = mkdtempSync(join(tmpdir(), 'herald-cli-'));
const servers = [];
after(async () => {
  for (const s of servers) await s.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** Runs the binary to completion (bounded); returns {code, stdout, stderr}. */
function run(args, { env = {}, input, timeoutMs = 20_000 } = {}) {
  return new Promise((resolve, reject) => {
    const proc = spawn(heraldBin(), args, { env: { ...process.env, ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    proc.stdout.on('data', (c) => { stdout += c; });
    proc.stderr.on('data', (c) => { stderr += c; });
    const timer = setTimeout(() => { proc.kill('SIGKILL'); reject(new Error(`herald ${args.join(' ')} did not finish in ${timeoutMs} ms\n${stderr}`)); }, timeoutMs);
    proc.on('exit', (code) => { clearTimeout(timer); resolve({ code, stdout, stderr }); });
    proc.stdin.on('error', () => {}); // a process that exits at once closes its stdin
    proc.stdin.end(input ?? '');
  });
}

async function firstRetry(url) {
  const h = await openRaw(url, '/v1/events?topic=x');
  await h.firstData;
  h.close();
  return h.retries[0];
}

test('bad configuration exits 64 before binding, naming the option and its source', async () => {
  // Hold a port: a config error must be reported even though binding would fail too.
  const held = await startHerald();
  servers.push(held);
  const port = new URL(held.url).port;

  const flag = await run(['serve', '--dev', '--memory', '--listen', `127.0.0.1:${port}`, '--heartbeat-secs', '0']);
  assert.equal(flag.code, 64, flag.stderr);
  assert.match(flag.stderr, /heartbeat_secs/);

  const env = await run(['serve', '--dev', '--memory'], { env: { HERALD_LISTEN: 'not-an-address' } });
  assert.equal(env.code, 64, env.stderr);
  assert.match(env.stderr, /listen/);
  assert.match(env.stderr, /HERALD_LISTEN/);

  const badType = join(dir, 'bad-type.toml');
  writeFileSync(badType, 'retry_ms = "soon"\n');
  const file = await run(['serve', '--dev', '--memory', '--config', badType]);
  assert.equal(file.code, 64, file.stderr);
  assert.match(file.stderr, /retry_ms/);
  assert.ok(file.stderr.includes(badType), `names the file: ${file.stderr}`);

  const typo = join(dir, 'typo.toml');
  writeFileSync(typo, 'hartbeat_secs = 5\n');
  const unknown = await run(['serve', '--dev', '--memory', '--config', typo]);
  assert.equal(unknown.code, 64, unknown.stderr);
  assert.match(unknown.stderr, /hartbeat_secs/);

  const missing = await run(['serve', '--dev', '--memory', '--config', join(dir, 'nope.toml')]);
  assert.equal(missing.code, 64, missing.stderr);

  const usage = await run(['serve', '--no-such-flag']);
  assert.equal(usage.code, 64, usage.stderr);
});

test('flags win over HERALD_* env, env over the config file', async () => {
  const cfg = join(dir, 'ok.toml');
  writeFileSync(cfg, 'retry_ms = 1111\nheartbeat_secs = 30\n');
  const fromFile = await startHerald(['--config', cfg]);
  servers.push(fromFile);
  assert.equal(await firstRetry(fromFile.url), 1111);

  const fromEnv = await startHerald(['--config', cfg], { env: { HERALD_RETRY_MS: '2222' } });
  servers.push(fromEnv);
  assert.equal(await firstRetry(fromEnv.url), 2222);

  const fromFlag = await startHerald(['--config', cfg, '--retry-ms', '3333'], { env: { HERALD_RETRY_MS: '2222' } });
  servers.push(fromFlag);
  assert.equal(await firstRetry(fromFlag.url), 3333);
});

/**
 * Starts `herald subscribe --url <server> ...args`, collecting its output,
 * and resolves once the server counts its user online.
 */
async function startSubscriber(server, args) {
  const proc = spawn(heraldBin(), ['subscribe', '--url', server.url, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const sub = { proc, out: '', err: '' };
  proc.stdout.on('data', (c) => { sub.out += c; });
  proc.stderr.on('data', (c) => { sub.err += c; });
  const exited = new Promise((resolve) => proc.on('exit', resolve));
  /** The exit code, or 'timeout' after `ms`. */
  sub.exit = (ms) => Promise.race([exited, new Promise((r) => setTimeout(() => r('timeout'), ms))]);
  const online = await pollUntil(() => stats(server.url), (s) => s.users_online === 1, { timeoutMs: 10_000 });
  if (online.users_online !== 1) {
    proc.kill('SIGKILL');
    assert.fail(`the subscriber did not connect: ${sub.err}`);
  }
  return sub;
}

test('herald publish prints the id; herald subscribe prints events and resumes after the stream ends', { timeout: 60_000 }, async () => {
  const server = await startHerald(['--retry-ms', '200']);
  servers.push(server);

  const sub = await startSubscriber(server, ['--user', '7777', '--json', '--count', '3']);
  try {

    const pub1 = await run(['publish', '--url', server.url, '--user', '7777', '--event', 'note', 'first']);
    assert.equal(pub1.code, 0, pub1.stderr);
    const id1 = pub1.stdout.trim();
    assert.match(id1, /^\d+$/);

    // End the stream, publish while the subscriber is away (data from stdin).
    const kicked = await request(server.url, '/v1/users/7777/connections', { method: 'DELETE' });
    assert.equal(kicked.json.closed, 1);
    const pub2 = await run(['publish', '--url', server.url, '--user', '7777', '-'], { input: 'second\nline' });
    assert.equal(pub2.code, 0, pub2.stderr);
    const id3 = await publishOk(server.url, { users: ['7777'], data: { third: true } });

    const code = await sub.exit(20_000);
    assert.equal(code, 0, `subscribe exited: ${code}\n${sub.err}`);
    const events = sub.out.trim().split('\n').map((l) => JSON.parse(l));
    assert.deepEqual(events, [
      { id: id1, event: 'note', data: 'first' },
      { id: pub2.stdout.trim(), event: 'message', data: 'second\nline' },
      { id: id3, event: 'message', data: '{"third":true}' },
    ]);
  } finally {
    sub.proc.kill('SIGKILL');
  }
});

test('herald subscribe --count 2 exits 0 after printing exactly the first 2 events', { timeout: 60_000 }, async () => {
  const server = await startHerald();
  servers.push(server);

  const sub = await startSubscriber(server, ['--user', '4242', '--json', '--count', '2']);
  try {

    const ids = [];
    for (const data of ['one', 'two', 'three']) ids.push(await publishOk(server.url, { users: ['4242'], data }));

    const code = await sub.exit(20_000);
    assert.equal(code, 0, `subscribe exited: ${code}\n${sub.err}`);
    const events = sub.out.trim().split('\n').map((l) => JSON.parse(l));
    assert.deepEqual(events, [
      { id: ids[0], event: 'message', data: 'one' },
      { id: ids[1], event: 'message', data: 'two' },
    ]);
  } finally {
    sub.proc.kill('SIGKILL');
  }
});

test('herald subscribe --count prints herald.* events but does not count them', { timeout: 60_000 }, async () => {
  const server = await startHerald();
  servers.push(server);
  const id1 = await publishOk(server.url, { users: ['4343'], data: 'kept' });

  // An id the server cannot resume from: the stream starts with herald.gap.
  const r = await run(['subscribe', '--url', server.url, '--user', '4343', '--json', '--count', '1', '--last-event-id', 'garbage']);
  assert.equal(r.code, 0, r.stderr);
  const events = r.stdout.trim().split('\n').map((l) => JSON.parse(l));
  assert.equal(events.length, 2, r.stdout);
  assert.equal(events[0].event, 'herald.gap');
  assert.deepEqual(events[1], { id: id1, event: 'message', data: 'kept' });
});

test('herald subscribe --count 0 is a usage error', async () => {
  const r = await run(['subscribe', '--url', 'http://127.0.0.1:9', '--count', '0']);
  assert.equal(r.code, 64, r.stderr);
  assert.match(r.stderr, /--count/);
});

test('herald publish without a target is a usage error', async () => {
  const r = await run(['publish', '--url', 'http://127.0.0.1:9', 'data']);
  assert.equal(r.code, 64, r.stderr);
  assert.match(r.stderr, /--user, --topic or --broadcast/);
});
