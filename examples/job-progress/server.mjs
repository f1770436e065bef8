// The job-progress example's backend: a page starts a long job, this
// backend runs it and publishes each step (percent and stage) to the user
// who started it, on the user's personal topic (`users: [id]` on publish,
// `user/<id>` on Herald), so nobody else sees it.
//
// The backend owns the job's state: it records each step together with the
// id Herald gave its event. A page that opens (or reopens) first asks for
// that state, shows it at once, and subscribes with `lastEventId` set to the
// state's id, so the steps published after it arrive and none is missed.
//
// A visitor is a random id in a cookie (`uid`); the page's token carries it
// as `sub`, so Herald lets that page read `user/<uid>` and nothing else.
//
// Node built-ins only; it talks to Herald over HTTP, as your own app would.
//
// Environment (defaults in brackets):
//   PORT [3005]                    port of this backend (0: any free port)
//   HERALD_URL [http://127.0.0.1:8080]    where this backend reaches Herald
//   HERALD_PUBLIC_URL [HERALD_URL] where the browser reaches Herald
//   HERALD_JWT_SECRET              Herald's `jwt_secret` (signs page tokens)
//   HERALD_API_KEY                 an API key with `publish=user/*`
//   JOB_STEP_MS [500]              time one step of the job takes (20 steps)

import http from 'node:http';
import { createHmac, randomUUID } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';

/**
 * A whole number from the environment, or the default; anything else stops
 * the backend with a message naming the variable (exit 64, like Herald).
 */
function intFromEnv(name, fallback, min, max) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!/^\d+$/.test(raw) || value < min || value > max) {
    console.error(`${name}=${JSON.stringify(raw)}: expected a whole number from ${min} to ${max}`);
    process.exit(64);
  }
  return value;
}

const config = {
  port: intFromEnv('PORT', 3005, 0, 65535),
  heraldUrl: (process.env.HERALD_URL ?? 'http://127.0.0.1:8080').replace(/\/+$/, ''),
  jwtSecret: process.env.HERALD_JWT_SECRET ?? 'herald-examples-secret-change-me',
  apiKey: process.env.HERALD_API_KEY ?? 'herald-examples-publish-key',
  stepMs: intFromEnv('JOB_STEP_MS', 500, 1, 3_600_000),
};
config.publicHeraldUrl = (process.env.HERALD_PUBLIC_URL ?? config.heraldUrl).replace(/\/+$/, '');

/** Lifetime of a page's token; the page asks for a new one when it expires. */
const TOKEN_TTL_SECS = 3600;
/** Percent added by each step. */
const STEP_PERCENT = 5;

/** What the job is doing at a given percent. */
function stageAt(percent) {
  if (percent === 0) return 'queued';
  if (percent <= 30) return 'downloading';
  if (percent <= 80) return 'processing';
  if (percent < 100) return 'uploading';
  return 'done';
}

/**
 * uid -> {job: {id, percent, stage, running}, last_event_id}: the state of
 * the user's latest job as published (a step is recorded only once Herald
 * has stored its event).
 */
const jobs = new Map();

const b64url = (buf) => Buffer.from(buf).toString('base64url');

/** An HS256 JWT for Herald, signed with its `jwt_secret`. */
function mintToken(claims) {
  const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const exp = Math.floor(Date.now() / 1000) + TOKEN_TTL_SECS;
  const payload = b64url(JSON.stringify({ ...claims, exp }));
  const signature = createHmac('sha256', config.jwtSecret).update(`${header}.${payload}`).digest();
  return `${header}.${payload}.${b64url(signature)}`;
}

/** Publishes one event to Herald; returns its id. */
async function publish(event) {
  const res = await fetch(`${config.heraldUrl}/v1/publish`, {
    method: 'POST',
    headers: { authorization: `Bearer ${config.apiKey}`, 'content-type': 'application/json' },
    body: JSON.stringify(event),
    signal: AbortSignal.timeout(10_000),
  });
  const answer = await res.json().catch(() => null);
  if (res.status !== 201 || typeof answer?.id !== 'string') {
    throw new Error(`Herald answered ${res.status}: ${answer?.error?.message ?? 'no JSON'}`);
  }
  return answer.id;
}

/** Publishes a step of `uid`'s job and records it as the job's state. */
async function report(uid, job) {
  const step = { id: job.id, percent: job.percent, stage: job.stage, running: job.running };
  const id = await publish({ users: [uid], event: 'job.progress', data: step });
  jobs.set(uid, { job: step, last_event_id: id });
}

/** Runs a job for `uid`: 20 steps of `JOB_STEP_MS`, each reported. */
async function runJob(uid, job) {
  try {
    await report(uid, job);
    while (job.percent < 100) {
      await sleep(config.stepMs);
      job.percent += STEP_PERCENT;
      job.stage = stageAt(job.percent);
      job.running = job.percent < 100;
      await report(uid, job);
    }
  } catch (err) {
    // Herald could not take a step: the job stops and says why.
    console.error(`job ${job.id} of ${uid}: ${err.message}`);
    const failed = { ...job, stage: 'failed', running: false };
    jobs.set(uid, { job: failed, last_event_id: jobs.get(uid)?.last_event_id ?? '' });
    publish({ users: [uid], event: 'job.progress', data: failed })
      .then((id) => jobs.set(uid, { job: failed, last_event_id: id }))
      .catch(() => {});
  }
}

function sendJson(res, status, body, headers = {}) {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store', ...headers });
  res.end(JSON.stringify(body));
}

const sendError = (res, status, code, message) => sendJson(res, status, { error: { code, message } });

async function sendFile(res, name, type, headers = {}) {
  const body = await readFile(new URL(name, import.meta.url));
  res.writeHead(200, { 'content-type': type, 'cache-control': 'no-cache', ...headers });
  res.end(body);
}

/** The visitor's id from the `uid` cookie (only ids this backend could have set). */
function visitor(req) {
  const m = /(?:^|;\s*)uid=([0-9a-f-]{36})(?:;|$)/.exec(req.headers.cookie ?? '');
  return m ? m[1] : null;
}

async function route(req, res) {
  const url = new URL(req.url, 'http://localhost');
  const key = `${req.method} ${url.pathname}`;
  if (key === 'GET /') {
    // A new visitor gets an id that lasts a year; the page is the same for all.
    const cookie = visitor(req) ? {} : { 'set-cookie': `uid=${randomUUID()}; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax` };
    return sendFile(res, 'index.html', 'text/html; charset=utf-8', cookie);
  }
  if (key === 'GET /app.js') return sendFile(res, 'app.js', 'text/javascript; charset=utf-8');
  const uid = visitor(req);
  if (!uid && url.pathname.startsWith('/api/')) {
    return sendError(res, 401, 'no_visitor', 'no visitor id: open the page first (it sets the `uid` cookie)');
  }
  switch (key) {
    case 'GET /api/session':
      // The token's `sub` is the visitor: Herald lets it read `user/<uid>`.
      return sendJson(res, 200, { herald_url: config.publicHeraldUrl, user: uid, token: mintToken({ sub: uid }) });
    case 'GET /api/jobs/current':
      return sendJson(res, 200, jobs.get(uid) ?? { job: null, last_event_id: '' });
    case 'POST /api/jobs': {
      if (jobs.get(uid)?.job.running) {
        return sendError(res, 409, 'job_running', 'your job is still running: wait for it to finish');
      }
      const job = { id: randomUUID(), percent: 0, stage: stageAt(0), running: true };
      // Marked running at once, so a second click cannot start a second job.
      jobs.set(uid, { job: { ...job }, last_event_id: jobs.get(uid)?.last_event_id ?? '' });
      runJob(uid, job);
      return sendJson(res, 202, { job });
    }
    default:
      return sendError(res, 404, 'not_found', `no route ${key}`);
  }
}

const server = http.createServer((req, res) => {
  route(req, res).catch((err) => {
    if (!res.headersSent) sendError(res, 500, 'internal', err.message);
    else res.destroy();
  });
});

server.on('error', (err) => {
  console.error(`cannot listen on 127.0.0.1:${config.port}: ${err.message}`);
  process.exit(1);
});
server.listen(config.port, '127.0.0.1', () => {
  const { port } = server.address();
  console.log(`job-progress example listening on http://127.0.0.1:${port} (Herald at ${config.heraldUrl})`);
});

for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(0));
