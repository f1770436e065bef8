// Herald nodes on one Redis, a publisher that keeps publishing through
// faults the way a careful backend does, and the check that every
// subscriber ended with exactly the acknowledged events, in order.

import assert from 'node:assert/strict';
import { startHerald, sleep, cmpId } from './server.mjs';

/** Starts `count` Herald nodes (dev mode) on `redisUrl`, each with `args`. */
export async function startNodes(count, redisUrl, args = [], options = {}) {
  const nodes = [];
  for (let i = 0; i < count; i++) {
    nodes.push(await startHerald(['--redis', redisUrl, '--node-id', `node-${i}`, ...args], options));
  }
  return nodes;
}

/** One publish attempt: `{ status, id }`, or `{ status: 0, error }` when no answer came. */
async function publishOnce(url, { topic, data, key, timeoutMs }) {
  try {
    const r = await fetch(`${url}/v1/publish`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ topics: [topic], data, idempotency_key: key }),
      signal: AbortSignal.timeout(timeoutMs),
    });
    const text = await r.text();
    let id;
    try { id = JSON.parse(text).id; } catch { /* an error body */ }
    return { status: r.status, id, text };
  } catch (error) {
    return { status: 0, error: String(error.cause?.code ?? error.message) };
  }
}

/**
 * Publishes `data: "<seq>"` for seq = 0, 1, ... to `topic`, one at a time,
 * round robin over `urls()` (called each time: a test may change the set),
 * every `intervalMs`, until `stop()` is called or `maxEvents` were
 * acknowledged. Each event has its own idempotency key, and an attempt that
 * gets no 2xx is retried (on the next node, after a pause) with the same key
 * until acknowledged, for at most `retryForMs`: a careful publisher.
 *
 * Returns { stop(), done: Promise<{ acked: Map<seq, id>, attempts: [...] }> }
 * where `attempts` records every answer ({ seq, url, status, error }).
 */
export function keepPublishing(urls, { topic, intervalMs = 20, maxEvents = 10_000, retryForMs = 30_000, timeoutMs = 5_000, keyPrefix = `k${Date.now()}` } = {}) {
  let stopping = false;
  const acked = new Map();
  const attempts = [];
  let turn = 0;
  const done = (async () => {
    for (let seq = 0; !stopping && seq < maxEvents; seq++) {
      const key = `${keyPrefix}-${seq}`;
      const deadline = Date.now() + retryForMs;
      for (;;) {
        const list = urls();
        const url = list[turn++ % list.length];
        const r = await publishOnce(url, { topic, data: String(seq), key, timeoutMs });
        attempts.push({ seq, url, status: r.status, error: r.error, at: Date.now() });
        if (r.status === 200 || r.status === 201) {
          acked.set(seq, r.id);
          break;
        }
        if (Date.now() > deadline) {
          throw new Error(`event ${seq} was not acknowledged within ${retryForMs} ms; last answer ${r.status} ${r.error ?? r.text}`);
        }
        await sleep(100);
      }
      await sleep(intervalMs);
    }
    return { acked, attempts };
  })();
  return { stop() { stopping = true; }, done };
}

/**
 * Asserts that `received` ([{ id, data }] in arrival order) holds exactly the
 * acknowledged events (`acked`: seq → id), each once, in id order, with the
 * acknowledged ids — and nothing else, except:
 * - events whose publish got no answer at all (`unanswered`: seqs that may
 *   or may not have been stored);
 * - events whose ids are in `lostIds`: delivered, then lost by Redis in a
 *   failover before they reached a replica (never acknowledged: their
 *   publisher's retry stored them again, under a new id).
 */
export function assertExactly(received, acked, what, { unanswered = new Set(), lostIds = new Set() } = {}) {
  const seen = new Map();
  for (const ev of received) {
    if (lostIds.has(ev.id)) continue;
    const seq = Number(ev.data);
    assert.ok(!seen.has(seq), `${what}: event ${seq} (id ${ev.id}) arrived twice`);
    seen.set(seq, ev.id);
  }
  for (let i = 1; i < received.length; i++) {
    assert.equal(cmpId(received[i - 1].id, received[i].id), -1,
      `${what}: ids in order (${received[i - 1].id} then ${received[i].id})`);
  }
  const missing = [...acked.keys()].filter((seq) => !seen.has(seq));
  assert.deepEqual(missing.slice(0, 20), [], `${what}: ${missing.length} acknowledged events missing`);
  for (const [seq, id] of acked) {
    assert.equal(seen.get(seq), id, `${what}: event ${seq} has the id its publish was answered with`);
  }
  const extra = [...seen.keys()].filter((seq) => !acked.has(seq) && !unanswered.has(seq));
  assert.deepEqual(extra, [], `${what}: events nobody acknowledged`);
}

/** Polls GET {url}/readyz until its status satisfies pred; returns the last status. */
export async function readyzUntil(url, pred, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  let status = 0;
  for (;;) {
    try {
      // Longer than /readyz's own bound on a Redis that does not answer (2 s).
      const r = await fetch(`${url}/readyz`, { signal: AbortSignal.timeout(5_000) });
      await r.arrayBuffer();
      status = r.status;
    } catch {
      status = 0;
    }
    if (pred(status) || Date.now() > deadline) return status;
    await sleep(100);
  }
}
