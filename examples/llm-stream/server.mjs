// The llm-stream example's backend: answers a question by publishing a
// canned answer (answer.txt) token by token to the asking user, with a short
// delay between tokens, the way a language model's output arrives. The page
// types the tokens as they come; Herald's resume makes a dropped connection
// lose and repeat nothing.
//
// Node built-ins only: `node examples/llm-stream/server.mjs`.
// Talks to Herald over HTTP, as your own app would: it mints subscriber
// tokens (HS256 JWTs) with HERALD_JWT_SECRET and publishes with
// HERALD_API_KEY.
//
// Each answer's tokens are published one at a time, in order, so Herald's
// ids follow the token order; every token event carries its position
// (`seq`), which lets the page show a missing or doubled token if there
// ever were one.

import http from 'node:http';
import crypto from 'node:crypto';
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

const HERALD_URL = (process.env.HERALD_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const JWT_SECRET = process.env.HERALD_JWT_SECRET || 'herald-examples-secret-change-me';
const API_KEY = process.env.HERALD_API_KEY || 'herald-examples-publish-key';
const PORT = Number(process.env.PORT || 3002);
const HOST = process.env.HOST || '127.0.0.1';
const TOKEN_TTL_SECS = Number(process.env.TOKEN_TTL_SECS || 300);
const TOKEN_DELAY_MS = Number(process.env.TOKEN_DELAY_MS || 40);

const PAGE = readFileSync(new URL('./index.html', import.meta.url), 'utf8');
const ANSWER = readFileSync(new URL('./answer.txt', import.meta.url), 'utf8').trimEnd();

/**
 * Splits text into tokens the way a model emits them: a word's leading
 * whitespace and up to five of its characters each, so long words come in
 * pieces. Joined, the tokens are the text again, exactly.
 */
function tokenize(text) {
  return text.match(/\s*\S{1,5}|\s+$/g) || [];
}

// ---------------------------------------------------------------------------
// Herald: tokens and publishing

const b64url = (value) => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');

/** A subscriber token for `user`: its own topic `user/{user}` only. */
function mintToken(user) {
  const head = b64url({ alg: 'HS256', typ: 'JWT' });
  const body = b64url({ sub: user, exp: Math.floor(Date.now() / 1000) + TOKEN_TTL_SECS });
  const signature = crypto.createHmac('sha256', JWT_SECRET).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${signature}`;
}

/** Publishes one event to one user; returns the id Herald stored it under. */
async function publishToUser(user, event, data) {
  const res = await fetch(`${HERALD_URL}/v1/publish`, {
    method: 'POST',
    headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({ users: [user], event, data }),
  });
  const answer = await res.json().catch(() => ({}));
  if (res.status !== 201) {
    throw new Error(`Herald refused the publish (${res.status} ${answer.error?.code}: ${answer.error?.message})`);
  }
  return answer.id;
}

// ---------------------------------------------------------------------------
// Answers

let nextAnswer = 1;

/** Streams the canned answer to `user` in the background; returns its id and size. */
function startAnswer(user, question) {
  const answer = String(nextAnswer++);
  const tokens = tokenize(ANSWER);
  (async () => {
    await publishToUser(user, 'answer.start', { answer, question, tokens: tokens.length });
    for (let seq = 0; seq < tokens.length; seq += 1) {
      await sleep(TOKEN_DELAY_MS);
      await publishToUser(user, 'answer.token', { answer, seq, text: tokens[seq] });
    }
    await publishToUser(user, 'answer.done', { answer, tokens: tokens.length });
  })().catch((err) => {
    console.error(`answer ${answer} for ${user} stopped: ${err.message}`);
    publishToUser(user, 'answer.failed', { answer, message: err.message }).catch(() => {});
  });
  return { answer, tokens: tokens.length };
}

// ---------------------------------------------------------------------------
// HTTP

class BadRequest extends Error {}

function validUser(value) {
  // Stands in for your app's login: the user comes from ?user= here.
  const user = value || 'alice';
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(user)) throw new BadRequest('user must be 1 to 64 letters, digits, "_" or "-"');
  return user;
}

async function readJson(req) {
  let size = 0;
  const chunks = [];
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new BadRequest('the body is over 64 KiB');
    chunks.push(chunk);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}');
  } catch {
    throw new BadRequest('the body is not JSON');
  }
}

const send = (res, status, type, body) => res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' }).end(body);
const sendJson = (res, status, value) => send(res, status, 'application/json', JSON.stringify(value));
const sendError = (res, status, code, message) => sendJson(res, status, { error: { code, message } });

async function handle(req, res) {
  const url = new URL(req.url, 'http://localhost');
  const route = `${req.method} ${url.pathname}`;
  if (route === 'GET /') {
    return send(res, 200, 'text/html; charset=utf-8', PAGE.replaceAll('%HERALD_URL%', HERALD_URL));
  }
  if (route === 'GET /token') {
    return send(res, 200, 'text/plain', mintToken(validUser(url.searchParams.get('user'))));
  }
  if (route === 'GET /api/answer-text') {
    // The whole canned answer at once: what the streamed text must add up to.
    return send(res, 200, 'text/plain; charset=utf-8', ANSWER);
  }
  if (route === 'POST /api/ask') {
    const body = await readJson(req);
    const question = typeof body.question === 'string' ? body.question.trim() : '';
    if (!question || question.length > 1000) throw new BadRequest('question must be 1 to 1000 characters');
    return sendJson(res, 202, startAnswer(validUser(body.user), question));
  }
  return sendError(res, 404, 'not_found', `no route ${route}`);
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((err) => {
    if (err instanceof BadRequest) return sendError(res, 400, 'bad_request', err.message);
    console.error(err);
    return sendError(res, 502, 'herald_unavailable', err.message);
  });
});
server.listen(PORT, HOST, () => {
  console.log(`llm-stream example listening on http://${HOST}:${server.address().port} (Herald: ${HERALD_URL})`);
});
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => server.close(() => process.exit(0)).closeAllConnections());
