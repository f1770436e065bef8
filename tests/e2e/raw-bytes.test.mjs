// The exact bytes on the wire: status line, headers, de-chunked body.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createParser } from 'eventsource-parser';
import { startHerald, publishOk, rawTcpSse } from './lib/server.mjs';

let server;
const sockets = [];

before(async () => {
  server = await startHerald(['--heartbeat-secs', '300']);
});
after(async () => {
  for (const s of sockets) s.close();
  if (server) await server.stop();
});

// What the contract (docs/api.md) fixes, in the order the server sets them, then
// what hyper adds (transfer-encoding, date). `vary: Origin` comes from the CORS
// layer, which adds it to every answer.
const EXPECTED_HEAD = [
  'HTTP/1.1 200 OK',
  'content-type: text/event-stream; charset=utf-8',
  'cache-control: no-cache',
  'x-accel-buffering: no',
  'connection: keep-alive',
  'vary: Origin',
  'transfer-encoding: chunked',
  'date: <date>',
].join('\r\n') + '\r\n\r\n';

function normaliseHead(head) {
  return head.replace(/^date: [^\r\n]*$/im, (m) => `${m.slice(0, m.indexOf(':'))}: <date>`);
}

test('stream head and body are byte-exact', { timeout: 20_000 }, async () => {
  const s = rawTcpSse(server.url, '/v1/events?topic=raw');
  sockets.push(s);
  await s.waitHead();
  assert.ok(s.head !== null, 'got a response head');
  await s.waitBody((h) => h.body().toString('utf8') === 'retry: 3000\n:ok\n', 10_000, 'the prelude');

  const observedHead = normaliseHead(s.head);
  if (observedHead !== EXPECTED_HEAD) {
    console.log('# observed head differs from the expected one:');
    for (const line of s.head.split('\r\n')) console.log(`#   ${JSON.stringify(line)}`);
  }
  assert.equal(observedHead, EXPECTED_HEAD);
  // Date is an IMF-fixdate.
  assert.match(s.head, /\r\ndate: [A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT\r\n/);

  const cases = [
    [{ data: 'hello' }, (id) => `id: ${id}\ndata: hello\n\n`, 'hello'],
    [{ event: 'greet', data: 'line1\nline2' }, (id) => `id: ${id}\nevent: greet\ndata: line1\ndata: line2\n\n`, 'line1\nline2'],
    [{ data: 'a\rb' }, (id) => `id: ${id}\ndata: a\ndata: b\n\n`, 'a\nb'],
    [{ data: 'c\r\nd' }, (id) => `id: ${id}\ndata: c\ndata: d\n\n`, 'c\nd'],
    [{ data: 'e\n' }, (id) => `id: ${id}\ndata: e\ndata: \n\n`, 'e\n'],
    [{ data: ' f' }, (id) => `id: ${id}\ndata:  f\n\n`, ' f'],
    [{ data: ':g' }, (id) => `id: ${id}\ndata: :g\n\n`, ':g'],
    [{ data: { k: [1, 2] } }, (id) => `id: ${id}\ndata: {"k":[1,2]}\n\n`, '{"k":[1,2]}'],
    [{ data: 'r', retry: 1500 }, (id) => `id: ${id}\ndata: r\nretry: 1500\n\n`, 'r'],
    [{ data: '' }, (id) => `id: ${id}\ndata: \n\n`, ''],
    [{ event: 'x', data: 'id: 1\n\nevent: evil\ndata: injected' },
      (id) => `id: ${id}\nevent: x\ndata: id: 1\ndata: \ndata: event: evil\ndata: data: injected\n\n`,
      'id: 1\n\nevent: evil\ndata: injected'],
  ];

  let expected = 'retry: 3000\n:ok\n';
  const expectedParsed = [];
  for (const [fields, frame, parsedData] of cases) {
    const id = await publishOk(server.url, { topics: ['raw'], ...fields });
    expected += frame(id);
    expectedParsed.push({ id, event: fields.event, data: parsedData });
  }
  await s.waitBody((h) => h.body().length >= Buffer.byteLength(expected), 10_000, 'all frames');
  const body = s.body().toString('utf8');
  if (body !== expected) console.log(`# observed body: ${JSON.stringify(body)}`);
  assert.equal(body, expected);
  assert.equal(s.dechunker.error, null);

  // And a spec parser reads back exactly what was published.
  const parsed = [];
  const p = createParser({ onEvent: (ev) => parsed.push({ id: ev.id, event: ev.event, data: ev.data }) });
  p.feed(body);
  assert.deepEqual(parsed, expectedParsed);
  s.close();
});

test('--retry-ms sets the opening retry line', { timeout: 30_000 }, async () => {
  const other = await startHerald(['--retry-ms', '1234', '--heartbeat-secs', '300']);
  try {
    const s = rawTcpSse(other.url, '/v1/events?user=1');
    sockets.push(s);
    await s.waitHead();
    await s.waitBody((h) => h.body().length >= 'retry: 1234\n:ok\n'.length, 10_000, 'the prelude');
    assert.equal(s.body().toString('utf8'), 'retry: 1234\n:ok\n');
    s.close();
  } finally {
    await other.stop();
  }
});

test('idle streams get heartbeat comments', { timeout: 30_000 }, async () => {
  const other = await startHerald(['--heartbeat-secs', '1']);
  try {
    const s = rawTcpSse(other.url, '/v1/events?topic=idle');
    sockets.push(s);
    await s.waitHead();
    const prelude = 'retry: 3000\n:ok\n';
    await s.waitBody((h) => h.body().length >= prelude.length + 4, 15_000, 'two heartbeats');
    const body = s.body().toString('utf8');
    assert.ok(body.startsWith(prelude), JSON.stringify(body));
    assert.match(body.slice(prelude.length), /^(:\n){2,}$/, JSON.stringify(body));
    s.close();
  } finally {
    await other.stop();
  }
});
