// The durable log under SIGKILL: publishers publish continuously over HTTP
// while the server is killed and restarted 20 times. Afterwards a resume from
// before the first id returns every acknowledged event exactly once, in order
// (an event whose answer was lost in the kill may be there too: it was never
// acknowledged, so either way is right), and an EventSource that stayed
// subscribed across every restart received exactly that same sequence.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startHerald, openES, openRaw, sleep, waitFor, cmpId } from './lib/server.mjs';

const CYCLES = 20;
const PUBLISHERS = 4;
const dir = mkdtempSync(join(tmpdir(), 'herald-crash-'));
let server;
let es;

after(async () => {
  es?.close();
  await server?.stop();
  rmSync(dir, { recursive: true, force: true });
});

async function startOn(listen) {
  // The port may be briefly unavailable right after a kill: retry, bounded.
  for (let attempt = 0; ; attempt++) {
    try {
      return await startHerald(['--data-dir', dir, '--listen', listen, '--retry-ms', '100', '--heartbeat-secs', '1']);
    } catch (err) {
      if (attempt >= 20) throw err;
      await sleep(100);
    }
  }
}

test('kill -9 loses no acknowledged event; an EventSource across restarts gets exactly the stored sequence', { timeout: 180_000 }, async () => {
  server = await startHerald(['--data-dir', dir, '--retry-ms', '100', '--heartbeat-secs', '1']);
  const listen = new URL(server.url).host;
  const url = server.url;

  es = openES(url, 'topic=crash');
  await waitFor(() => es.opens >= 1, 10_000, 'the EventSource to open');

  const acked = new Map(); // id -> data
  const attempted = new Set(); // data of every publish attempted
  let running = true;
  let counter = 0;
  const publisher = async (p) => {
    while (running) {
      const batch = counter % 7 === 0;
      const items = (batch ? [0, 1, 2] : [0]).map(() => ({ topics: ['crash'], data: `p${p}-${counter++}` }));
      items.forEach((i) => attempted.add(i.data));
      try {
        const res = await fetch(`${url}/v1/publish`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify(batch ? items : items[0]),
          signal: AbortSignal.timeout(5_000),
        });
        if (res.status === 201) {
          const body = await res.json();
          const ids = batch ? body.map((b) => b.id) : [body.id];
          ids.forEach((id, k) => acked.set(id, items[k].data));
        } else {
          await res.arrayBuffer();
        }
      } catch {
        await sleep(20); // server down: try again shortly
      }
    }
  };
  const publishers = Array.from({ length: PUBLISHERS }, (_, p) => publisher(p));

  for (let cycle = 0; cycle < CYCLES; cycle++) {
    await sleep(150 + Math.floor(Math.random() * 250));
    server.proc.kill('SIGKILL');
    await waitFor(() => server.exited(), 10_000, 'the killed server to exit');
    server = await startOn(listen);
  }
  await sleep(300);
  running = false;
  await Promise.all(publishers);
  assert.ok(acked.size > 200, `publishers got enough acknowledgements to mean something (${acked.size})`);

  // Everything stored, from before the first id.
  const ids = [...acked.keys()].sort(cmpId);
  const beforeFirst = (BigInt(ids[0]) - 1n).toString();
  const stored = await openRaw(url, `/v1/events?topic=crash&lastEventId=${beforeFirst}`);
  const newest = ids[ids.length - 1];
  await waitFor(() => stored.events.some((e) => e.id && cmpId(e.id, newest) >= 0), 30_000, 'the resume to reach the newest acknowledged id');
  await sleep(200);
  stored.close();
  const log = stored.events;
  assert.ok(!log.some((e) => e.type === 'herald.gap'), 'no gap: retention is large');
  for (let i = 1; i < log.length; i++) {
    assert.equal(cmpId(log[i - 1].id, log[i].id), -1, `ids strictly increase at ${i}: ${log[i - 1].id} then ${log[i].id}`);
  }
  const byId = new Map(log.map((e) => [e.id, e.data]));
  for (const [id, data] of acked) {
    assert.equal(byId.get(id), data, `acknowledged event ${id} (${data}) is stored`);
  }
  const datas = log.map((e) => e.data);
  assert.equal(new Set(datas).size, datas.length, 'no event stored twice');
  for (const e of log) {
    assert.ok(attempted.has(e.data), `stored event ${e.id} was published by the test`);
  }

  // The EventSource reconnected by itself each time and resumed exactly.
  await waitFor(() => es.received.length >= log.length, 30_000, `the EventSource to have all ${log.length} events (has ${es.received.length})`);
  await sleep(300);
  console.log(`# acknowledged ${acked.size}, stored ${log.length}, attempted ${attempted.size}, EventSource opens ${es.opens}`);
  assert.ok(es.opens >= CYCLES / 2, `the EventSource reconnected across restarts (${es.opens} opens)`);
  assert.deepEqual(es.received.map((e) => [e.id, e.data]), log.map((e) => [e.id, e.data]));
});
