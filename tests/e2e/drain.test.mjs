// A rolling restart by SIGTERM loses nothing. Subscribers (npm `eventsource`,
// which reconnects by itself, and raw streams that do not) are open and two
// publishers publish continuously, each event with an idempotency key and
// retried with the same key until it is acknowledged. The server is sent
// SIGTERM, must exit 0 within its --shutdown-timeout-ms, and is restarted on
// the same data directory and port. Then:
// - every raw stream was ended by the server with a last `retry:` in
//   500–5000 ms, and those values differ between streams (clients spread
//   their reconnects);
// - every EventSource reconnected by itself, resumed with Last-Event-ID, and
//   received every acknowledged event exactly once, in id order (an event
//   whose answer was lost may be there too: it was never acknowledged).

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startHerald, openES, openRaw, sleep, waitFor, cmpId, stats } from './lib/server.mjs';

const EVENT_SOURCES = 6;
const RAW_STREAMS = 8;
const PUBLISHERS = 2;
const SHUTDOWN_TIMEOUT_MS = 8_000;
const TOPIC = 'drain';
const dir = mkdtempSync(join(tmpdir(), 'herald-drain-'));
let server;
const sources = [];
const raws = [];
let running = true;

after(async () => {
  running = false;
  for (const es of sources) es.close();
  for (const r of raws) r.close();
  await server?.stop();
  rmSync(dir, { recursive: true, force: true });
});

function start(extra = []) {
  return startHerald(['--data-dir', dir, '--heartbeat-secs', '1', '--shutdown-timeout-ms', String(SHUTDOWN_TIMEOUT_MS), ...extra]);
}

async function startOn(listen) {
  // The port is free once the old process has exited; retry a little anyway.
  for (let attempt = 0; ; attempt++) {
    try {
      return await start(['--listen', listen]);
    } catch (err) {
      if (attempt >= 20) throw err;
      await sleep(100);
    }
  }
}

test('SIGTERM drains: each stream gets its own retry, the process exits 0 in time, and a restart loses nothing', { timeout: 120_000 }, async () => {
  server = await start();
  const url = server.url;
  const listen = new URL(url).host;

  for (let i = 0; i < EVENT_SOURCES; i++) sources.push(openES(url, `topic=${TOPIC}`));
  for (let i = 0; i < RAW_STREAMS; i++) raws.push(await openRaw(url, `/v1/events?topic=${TOPIC}`));
  await waitFor(() => sources.every((es) => es.opens >= 1), 10_000, 'every EventSource to open');
  const open = await stats(url);
  assert.equal(open.connections, EVENT_SOURCES + RAW_STREAMS);

  const acked = new Map(); // id -> data
  const attempted = new Set();
  const publisher = async (p) => {
    for (let n = 0; running; n++) {
      const data = `p${p}-${n}`;
      attempted.add(data);
      // The same key until acknowledged: a retry after a refused connection
      // or a lost answer stores nothing twice.
      for (let attempt = 0; running || attempt === 0; attempt++) {
        try {
          const res = await fetch(`${server.url}/v1/publish`, {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify({ topics: [TOPIC], data, idempotency_key: data }),
            signal: AbortSignal.timeout(5_000),
          });
          const body = await res.json().catch(() => null);
          if (res.status === 201 || res.status === 200) {
            acked.set(body.id, data);
            break;
          }
        } catch { /* the server is down or draining: try again */ }
        if (attempt > 400) throw new Error(`publish of ${data} never acknowledged`);
        await sleep(25);
      }
      await sleep(5);
    }
  };
  const publishers = Array.from({ length: PUBLISHERS }, (_, p) => publisher(p));
  await waitFor(() => acked.size >= 50, 20_000, 'some acknowledged publishes before the restart');

  const ackedBefore = acked.size;
  const signalled = Date.now();
  server.proc.kill('SIGTERM');
  await waitFor(() => server.exited(), SHUTDOWN_TIMEOUT_MS + 5_000, 'the server to exit after SIGTERM');
  const took = Date.now() - signalled;
  const exit = server.exited();
  assert.deepEqual(exit, { code: 0, signal: null }, `exit after SIGTERM\n${server.output()}`);
  // The deadline, plus the runtime's last second and a busy machine's slack.
  assert.ok(took < SHUTDOWN_TIMEOUT_MS + 3_000, `exited within the shutdown timeout (${took} ms)`);

  // Every raw stream was ended by the server, after a last retry of its own.
  await waitFor(() => raws.every((r) => r.closed), 5_000, 'every raw stream to be ended');
  const drainRetries = raws.map((r) => {
    assert.ok(r.retries.length >= 2, `a preamble retry and a drain retry (${r.retries})`);
    return r.retries[r.retries.length - 1];
  });
  for (const retry of drainRetries) {
    assert.ok(retry >= 500 && retry <= 5_000, `drain retry ${retry} ms within 500–5000`);
  }
  assert.ok(new Set(drainRetries).size > 1, `the retry values differ between streams: ${drainRetries}`);

  server = await startOn(listen);
  await waitFor(() => acked.size >= ackedBefore + 50, 30_000, 'publishing to resume on the restarted server');
  running = false;
  await Promise.all(publishers);

  const ids = [...acked.keys()].sort(cmpId);
  const newest = ids[ids.length - 1];
  await waitFor(
    () => sources.every((es) => es.received.some((e) => cmpId(e.id, newest) >= 0)),
    30_000,
    'every EventSource to receive the newest acknowledged event',
  );
  await sleep(300);
  for (const [k, es] of sources.entries()) {
    assert.ok(es.opens >= 2, `EventSource ${k} reconnected (${es.opens} opens)`);
    const got = es.received;
    for (let i = 1; i < got.length; i++) {
      assert.equal(cmpId(got[i - 1].id, got[i].id), -1, `EventSource ${k}: ids increase at ${i}`);
    }
    const datas = got.map((e) => e.data);
    assert.equal(new Set(datas).size, datas.length, `EventSource ${k}: no event twice`);
    const byId = new Map(got.map((e) => [e.id, e.data]));
    for (const [id, data] of acked) {
      assert.equal(byId.get(id), data, `EventSource ${k}: acknowledged event ${id} (${data}) delivered`);
    }
    for (const e of got) assert.ok(attempted.has(e.data), `EventSource ${k}: ${e.data} was published by the test`);
  }
  console.log(`# acknowledged ${acked.size} (${ackedBefore} before SIGTERM), drain took ${took} ms, drain retries ${drainRetries.join(',')}`);
});
