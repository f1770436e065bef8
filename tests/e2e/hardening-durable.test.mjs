// The durable log after damage, with the real binary: a byte flipped in the
// middle of the last segment costs only the damaged record (set aside to a
// `.corrupt` file, reported with offsets), a stray file named with the
// largest id gives no ids, and a directory named like a segment is skipped.
// Each case stops the server, changes its data directory, restarts it and
// reads what it serves.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, readdirSync, readFileSync, writeFileSync, mkdirSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startHerald, publishOk, openRaw, waitFor, sleep } from './lib/server.mjs';

const dirs = [];
const servers = new Set();
after(async () => {
  for (const s of servers) await s.stop();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function dataDir(name) {
  const d = mkdtempSync(join(tmpdir(), `herald-hardening-durable-${name}-`));
  dirs.push(d);
  return d;
}

async function start(dir) {
  const s = await startHerald(['--data-dir', dir, '--heartbeat-secs', '1']);
  servers.add(s);
  return s;
}

async function kill(server) {
  server.proc.kill('SIGKILL');
  await waitFor(() => server.exited(), 10_000, 'the killed server to exit');
  servers.delete(server);
}

const segmentsOf = (dir) => join(dir, 'segments');
const segmentFiles = (dir) => readdirSync(segmentsOf(dir)).filter((n) => /^\d{20}\.log$/.test(n)).sort();

/** Publishes `n` events on `topic` in batches of 50; returns the acknowledged ids. */
async function publishMany(url, topic, n, pad = '') {
  const ids = [];
  for (let i = 0; i < n; i += 50) {
    const batch = [];
    for (let k = i; k < Math.min(n, i + 50); k++) batch.push({ topics: [topic], data: `e${k}${pad}` });
    ids.push(...(await publishOk(url, batch)));
  }
  return ids;
}

/**
 * Every `message` event on `topic` after `lastEventId`, read on one stream
 * until `want` have arrived (bounded by time), then 300 ms more for extras.
 */
async function readFrom(url, topic, lastEventId, want) {
  const h = await openRaw(url, `/v1/events?topic=${topic}`, { headers: { 'Last-Event-ID': lastEventId } });
  assert.equal(h.status, 200);
  const messages = () => h.events.filter((e) => e.type === 'message');
  try {
    await waitFor(() => messages().length >= want, 20_000, `${want} events (have ${messages().length})`);
  } catch { /* asserted by the caller, with what arrived */ }
  await sleep(300);
  h.close();
  return { messages: messages(), all: h.events.slice() };
}

test('a byte flipped in the middle of the last segment loses only the damaged record, set aside and reported', { timeout: 120_000 }, async () => {
  const dir = dataDir('flip');
  let server = await start(dir);
  const N = 2000;
  const acked = await publishMany(server.url, 'flip', N, '-'.repeat(200));
  await kill(server);

  const files = segmentFiles(dir);
  const last = join(segmentsOf(dir), files[files.length - 1]);
  const bytes = readFileSync(last);
  const middle = Math.floor(bytes.length / 2);
  bytes[middle] ^= 0x01;
  writeFileSync(last, bytes);

  server = await start(dir);
  const { messages } = await readFrom(server.url, 'flip', '0', N - 1);
  const got = messages.map((e) => e.id);
  assert.equal(new Set(got).size, got.length, 'no event served twice');
  const ackedSet = new Set(acked);
  assert.ok(got.every((id) => ackedSet.has(id)), 'only acknowledged events are served');
  const gotSet = new Set(got);
  const missing = acked.filter((id) => !gotSet.has(id));
  assert.equal(missing.length, 1, `exactly the damaged record is missing, got ${missing.length} missing of ${N}`);
  for (const e of messages) assert.equal(e.data, `e${acked.indexOf(e.id)}${'-'.repeat(200)}`);

  const corrupt = readdirSync(segmentsOf(dir)).filter((n) => n.endsWith('.corrupt'));
  assert.equal(corrupt.length, 1, `one .corrupt file: ${corrupt}`);
  const m = /^(\d{20}\.log)\.(\d+)-(\d+)\.corrupt$/.exec(corrupt[0]);
  assert.ok(m, corrupt[0]);
  assert.equal(m[1], files[files.length - 1]);
  const [start_, end] = [Number(m[2]), Number(m[3])];
  assert.ok(start_ <= middle && middle < end, `the set-aside range ${start_}..${end} holds the flipped byte ${middle}`);
  assert.equal(statSync(join(segmentsOf(dir), corrupt[0])).size, end - start_);
  await waitFor(() => /damaged bytes/.test(server.output()), 5_000, 'the damage report');
  const out = server.output();
  assert.match(out, new RegExp(`start=${start_}\\b.*end=${end}\\b`), out.slice(-2000));
  assert.match(out, new RegExp(`damaged bytes ${start_}\\.\\.${end} \\(${end - start_} bytes\\)`));
  assert.doesNotMatch(out, /torn write/);

  // New events go on after the last id, and a client resuming from the
  // last acknowledged id gets exactly them.
  const next = await publishMany(server.url, 'flip', 3);
  assert.ok(BigInt(next[0]) > BigInt(acked[N - 1]));
  const resumed = await readFrom(server.url, 'flip', acked[N - 1], 3);
  assert.deepEqual(resumed.messages.map((e) => e.id), next);
  await server.stop();
  servers.delete(server);
});

test('a stray 18446744073709551615.log gives no ids: they keep increasing, a subscriber sees no duplicate and no gap', { timeout: 120_000 }, async () => {
  const dir = dataDir('stray');
  let server = await start(dir);
  let acked = await publishMany(server.url, 'stray', 20);
  const stray = join(segmentsOf(dir), '18446744073709551615.log');
  for (const [what, content] of [
    ['empty', Buffer.alloc(0)],
    ['garbage', Buffer.concat([Buffer.from('HERALDL1'), Buffer.alloc(500, 0x5a)])],
  ]) {
    await kill(server);
    writeFileSync(stray, content);
    server = await start(dir);
    const lastReal = acked[acked.length - 1];
    // A subscriber resuming from the last id, then live.
    const h = await openRaw(server.url, '/v1/events?topic=stray', { headers: { 'Last-Event-ID': lastReal } });
    assert.equal(h.status, 200);
    await sleep(200);
    const next = [];
    for (let i = 0; i < 5; i++) next.push(await publishOk(server.url, { topics: ['stray'], data: `${what}${i}` }));
    await waitFor(() => h.events.filter((e) => e.type === 'message').length >= 5, 10_000, `5 live events (${what})`).catch(() => {});
    await sleep(300);
    h.close();
    const ids = next.map(BigInt);
    assert.ok(ids[0] > BigInt(lastReal), `${what}: ${ids[0]} after ${lastReal}`);
    assert.ok(ids[4] < 2n ** 63n, `${what}: ids stay far from u64::MAX (${ids[4]})`);
    for (let i = 1; i < 5; i++) assert.ok(ids[i] > ids[i - 1], `${what}: ids increase`);
    assert.deepEqual(h.events.map((e) => [e.type, e.id]), next.map((id) => ['message', id]),
      `${what}: exactly the new events, once each, no herald.gap`);
    assert.ok(!readdirSync(segmentsOf(dir)).includes('18446744073709551615.log'), `${what}: the stray file is set aside`);
    acked = acked.concat(next);
  }
  // Everything is still served, in order.
  const { messages } = await readFrom(server.url, 'stray', '0', acked.length);
  assert.deepEqual(messages.map((e) => e.id), acked);
  await server.stop();
  servers.delete(server);
});

test('a directory named like a segment is skipped: the server starts and serves', { timeout: 60_000 }, async () => {
  const dir = dataDir('dir');
  let server = await start(dir);
  const acked = await publishMany(server.url, 'dir', 10);
  await server.stop();
  servers.delete(server);
  mkdirSync(join(segmentsOf(dir), '00000000000000000042.log'));
  server = await start(dir);
  // Logged before the listen line, but on the other pipe (stderr).
  await waitFor(() => /not a regular file/.test(server.output()), 5_000, 'the warning about the directory');
  const next = await publishMany(server.url, 'dir', 2);
  assert.ok(BigInt(next[0]) > BigInt(acked[9]));
  const { messages } = await readFrom(server.url, 'dir', '0', 12);
  assert.deepEqual(messages.map((e) => e.id), acked.concat(next));
  await server.stop();
  servers.delete(server);
});
