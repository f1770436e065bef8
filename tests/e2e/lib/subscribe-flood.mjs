// A child process of hardening-connections.test.mjs: opens many raw HTTP/1.1
// subscribe connections (one process may hold only so many sockets, so a
// flood larger than that is split over several of these), tells the parent
// how each one was answered, and holds the admitted streams open until the
// parent disconnects.
//
// argv: url count concurrency timeoutMs address[,address...]
// Messages to the parent: {done: true, open, refused, failed, causes}.
//
// Each connection is classified by its first bytes:
// - open: `200` and a stream that stays open (its preamble has no notice
//   of refusal);
// - refused: `200` whose body says `:over capacity`, with a `retry:` line,
//   and the server closed the connection;
// - failed: anything else (connect error, other status, timeout).

import net from 'node:net';

const [url, countArg, concurrencyArg, timeoutArg, addressesArg] = process.argv.slice(2);
const count = Number(countArg);
const concurrency = Number(concurrencyArg);
const timeoutMs = Number(timeoutArg);
const addresses = addressesArg.split(',');
const { hostname, port } = new URL(url);

const held = [];
const result = { open: 0, refused: 0, failed: 0, causes: {} };

function fail(cause) {
  result.failed += 1;
  result.causes[cause] = (result.causes[cause] ?? 0) + 1;
}

/** Opens connection `i`; resolves once it is classified. */
function attempt(i) {
  return new Promise((resolve) => {
    const socket = net.connect({ host: hostname, port: Number(port), localAddress: addresses[i % addresses.length] });
    let text = '';
    let settled = false;
    let status = 'pending';
    const settle = (outcome, cause) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (outcome === 'open') {
        result.open += 1;
        held.push(socket);
      } else {
        if (outcome === 'refused') result.refused += 1;
        else fail(cause);
        socket.destroy();
      }
      resolve();
    };
    const timer = setTimeout(() => settle('failed', 'timeout'), timeoutMs);
    socket.setNoDelay(true);
    socket.on('connect', () => {
      socket.write(`GET /v1/events?topic=flood HTTP/1.1\r\nHost: ${hostname}\r\nAccept: text/event-stream\r\n\r\n`);
    });
    socket.on('data', (chunk) => {
      if (settled) return;
      text += chunk.toString('latin1');
      if (!/^HTTP\/1\.1 200 /.test(text) && text.length >= 12) return settle('failed', `status ${text.slice(9, 12)}`);
      const bodyAt = text.indexOf('\r\n\r\n');
      if (bodyAt < 0) return;
      const body = text.slice(bodyAt + 4);
      const comment = /\n:([^\n]*)\n/.exec(body);
      if (!comment) return;
      if (comment[1] === 'ok') return settle('open'); // an admitted stream's preamble
      if (comment[1].startsWith('over capacity')) {
        status = /(^|\n)retry: \d+\n/.test(body) ? 'refused' : 'refused without retry';
      } else settle('failed', `comment ${comment[1]}`);
    });
    socket.on('end', () => {
      if (status === 'refused') settle('refused');
      else settle('failed', status === 'pending' ? 'closed' : status);
    });
    socket.on('close', () => settle('failed', status === 'refused' ? 'reset after refusal' : 'closed'));
    socket.on('error', (err) => settle('failed', err.code ?? err.message));
  });
}

let next = 0;
async function worker() {
  while (next < count) {
    const i = next;
    next += 1;
    await attempt(i);
  }
}
await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
process.send({ done: true, ...result });
// Hold the open streams until the parent goes away (or at most two minutes).
const bound = setTimeout(() => process.exit(0), 120_000);
process.on('disconnect', () => {
  clearTimeout(bound);
  for (const s of held) s.destroy();
  process.exit(0);
});
