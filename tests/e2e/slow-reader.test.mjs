// A subscriber that stops reading must not make the server buffer without
// bound, must not hold back other subscribers, and once it reads again must
// receive everything (the log has it all), in order, with no gap.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startHerald, publishOk, rssKiB, rawTcpSse, sleep, waitFor,
} from './lib/server.mjs';

const TOTAL = 200_000;
const BATCH = 1_000;
const TOPIC = 'load';
const MAX_GROWTH_KIB = 64 * 1024;

let server;
let slow;
let normal;

before(async () => {
  server = await startHerald([
    '--retention-events', '300000', '--queue-capacity', '256',
    '--max-body-bytes', String(4 * 1024 * 1024), '--heartbeat-secs', '300',
  ]);
});
after(async () => {
  slow?.close();
  normal?.close();
  if (server) await server.stop();
});

function dataFor(i) {
  const s = `n=${i} `;
  return s + 'p'.repeat(100 - s.length);
}

/** Checks events one by one as they arrive, without keeping them all. */
function makeChecker(publishedIds) {
  const st = { count: 0, gaps: 0, otherTypes: [], firstError: null };
  st.onEvent = (e) => {
    if (e.type === 'herald.gap') { st.gaps += 1; return; }
    if (e.type !== 'message') { if (st.otherTypes.length < 5) st.otherTypes.push(e.type); return; }
    const i = st.count;
    st.count += 1;
    if (st.firstError) return;
    if (i >= TOTAL) { st.firstError = `extra event #${i} id=${e.id}`; return; }
    const want = dataFor(i);
    if (e.data !== want) {
      st.firstError = `event #${i}: data ${JSON.stringify(e.data.slice(0, 20))} != ${JSON.stringify(want.slice(0, 20))}`;
      return;
    }
    // Ids are checked once all publishes answered (publishedIds filled).
    st.ids ??= [];
    st.ids.push(e.id);
  };
  st.checkIds = () => {
    for (let i = 0; i < st.ids.length; i++) {
      if (st.ids[i] !== publishedIds[i]) return `event #${i}: id ${st.ids[i]} != published ${publishedIds[i]}`;
    }
    return null;
  };
  return st;
}

test('a paused reader costs bounded memory and still gets all 200,000 events', { timeout: 200_000 }, async () => {
  const deadline = Date.now() + 180_000;
  const remaining = () => Math.max(1_000, deadline - Date.now());
  const publishedIds = [];

  const slowCheck = makeChecker(publishedIds);
  const normalCheck = makeChecker(publishedIds);

  slow = rawTcpSse(server.url, `/v1/events?topic=${TOPIC}`, {
    pauseAfterHead: true, onEvent: slowCheck.onEvent, keepBody: false,
  });
  normal = rawTcpSse(server.url, `/v1/events?topic=${TOPIC}`, {
    onEvent: normalCheck.onEvent, keepBody: false,
  });
  await slow.waitHead();
  await normal.waitHead();
  assert.match(slow.head, /^HTTP\/1\.1 200 /);
  assert.match(normal.head, /^HTTP\/1\.1 200 /);
  await sleep(200);

  const baseline = rssKiB(server.pid);
  let maxRss = baseline;
  const sampler = setInterval(() => {
    try { maxRss = Math.max(maxRss, rssKiB(server.pid)); } catch { /* process gone */ }
  }, 50);

  try {
    for (let b = 0; b < TOTAL / BATCH; b++) {
      const batch = [];
      for (let j = 0; j < BATCH; j++) batch.push({ topics: [TOPIC], data: dataFor(b * BATCH + j) });
      const ids = await publishOk(server.url, batch);
      assert.equal(ids.length, BATCH);
      publishedIds.push(...ids);
      if (Date.now() > deadline) throw new Error(`publishing took too long (${publishedIds.length} published)`);
    }

    await waitFor(() => normalCheck.count >= TOTAL || normalCheck.firstError, remaining(),
      `the normal subscriber to receive ${TOTAL} (has ${normalCheck.count})`, 50);
    // Keep sampling a little after publishing: buffers may still grow.
    await sleep(1_000);
    maxRss = Math.max(maxRss, rssKiB(server.pid));
  } finally {
    clearInterval(sampler);
  }

  const growth = maxRss - baseline;
  console.log(`# RSS baseline ${baseline} KiB, max ${maxRss} KiB, growth ${(growth / 1024).toFixed(1)} MiB; `
    + `slow reader had ${slowCheck.count} events before resuming`);

  assert.equal(normalCheck.firstError, null);
  assert.equal(normalCheck.count, TOTAL, 'normal subscriber got every event');
  assert.equal(normalCheck.gaps, 0, 'normal subscriber saw no gap');
  assert.deepEqual(normalCheck.otherTypes, []);
  assert.equal(normalCheck.checkIds(), null);
  assert.equal(normal.closed, false, 'normal subscriber still connected');

  // Now let the slow reader read.
  assert.equal(slow.closed, false, 'slow reader must not have been disconnected');
  slow.socket.resume();
  await waitFor(() => slowCheck.count >= TOTAL || slowCheck.firstError || slow.closed, remaining(),
    `the slow subscriber to receive ${TOTAL} (has ${slowCheck.count})`, 50);
  await sleep(200);
  assert.equal(slowCheck.firstError, null);
  assert.equal(slowCheck.gaps, 0, 'slow subscriber saw no herald.gap');
  assert.deepEqual(slowCheck.otherTypes, []);
  assert.equal(slowCheck.count, TOTAL, `slow subscriber got every event (closed=${slow.closed})`);
  assert.equal(slowCheck.checkIds(), null);

  // Checked last so that a failure here still tells whether delivery worked.
  assert.ok(growth < MAX_GROWTH_KIB,
    `server RSS grew by ${(growth / 1024).toFixed(1)} MiB (limit ${MAX_GROWTH_KIB / 1024} MiB)`);
});
