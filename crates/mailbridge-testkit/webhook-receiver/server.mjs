// Webhook receivers for Mailbridge's tests. Each delivery is checked with the official
// Standard Webhooks verifier (npm `standardwebhooks`) against the secret the test gave the
// receiver, and recorded with the verdict; then answered as the receiver's mode says:
//   ok            204 at once
//   fail_then_ok  `status` (default 500) for the first `times` deliveries, then 204
//   timeout       never answers (the sender must give up and retry)
//   gone          410 Gone (the sender must disable the endpoint)
//   slow          204 after `delay_ms`
//   hang_first    never answers the first delivery, 204 to the others (a sender that dies
//                 mid-delivery: another must send it again)
//
//   POST /control/receivers  {"name", "secrets": ["whsec_…"], "mode": {...}}  (re)configure
//   GET  /control/deliveries?name=…                                         what arrived
//   POST /hooks/<name>                                                      a delivery
//
// Prints one JSON line {"url": "..."} when it listens; stops on SIGTERM or stdin closing.

import http from 'node:http';
import { Webhook } from 'standardwebhooks';

const receivers = new Map(); // name -> { secrets, mode, seen }
const deliveries = []; // { name, id, type, timestamp, verified, error, body, received_at, answered }

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function json(res, status, value) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(value));
}

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://receiver');
  const body = await readBody(req);
  if (req.method === 'POST' && url.pathname === '/control/receivers') {
    const { name, secrets, mode } = JSON.parse(body);
    receivers.set(name, { secrets, mode: mode ?? { kind: 'ok' }, seen: 0 });
    return json(res, 200, { path: `/hooks/${name}` });
  }
  if (req.method === 'GET' && url.pathname === '/control/deliveries') {
    const name = url.searchParams.get('name');
    return json(res, 200, deliveries.filter((d) => !name || d.name === name));
  }
  const match = url.pathname.match(/^\/hooks\/([^/]+)$/);
  if (req.method === 'POST' && match) {
    const name = match[1];
    const receiver = receivers.get(name);
    if (!receiver) return json(res, 404, { error: `no receiver ${name}` });
    const headers = {
      'webhook-id': req.headers['webhook-id'],
      'webhook-timestamp': req.headers['webhook-timestamp'],
      'webhook-signature': req.headers['webhook-signature'],
    };
    // Verified if any of the receiver's secrets checks out (the sender signs with the old
    // and the new secret while a rotation is under way).
    let verified = false;
    let error = null;
    for (const secret of receiver.secrets) {
      try {
        new Webhook(secret).verify(body, headers);
        verified = true;
        break;
      } catch (e) {
        error = String(e.message ?? e);
      }
    }
    let parsed = null;
    try {
      parsed = JSON.parse(body);
    } catch {
      parsed = body;
    }
    const record = {
      name,
      id: headers['webhook-id'] ?? null,
      timestamp: headers['webhook-timestamp'] ?? null,
      signature: headers['webhook-signature'] ?? null,
      content_type: req.headers['content-type'] ?? null,
      verified,
      error: verified ? null : error,
      body: parsed,
      received_at: Date.now(),
      answered: null,
    };
    deliveries.push(record);
    receiver.seen += 1;
    const mode = receiver.mode;
    const answer = (status) => {
      record.answered = status;
      res.writeHead(status, { 'content-type': 'text/plain' });
      res.end(status >= 300 ? `receiver ${name} says ${status}` : '');
    };
    switch (mode.kind) {
      case 'fail_then_ok':
        return answer(receiver.seen <= (mode.times ?? 1) ? (mode.status ?? 500) : 204);
      case 'timeout':
        return; // never answered
      case 'gone':
        return answer(410);
      case 'slow':
        return setTimeout(() => answer(204), mode.delay_ms ?? 1000);
      case 'hang_first':
        return receiver.seen === 1 ? undefined : answer(204);
      default:
        return answer(204);
    }
  }
  json(res, 404, { error: 'unknown path' });
});

server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  process.stdout.write(JSON.stringify({ url: `http://127.0.0.1:${port}` }) + '\n');
});
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
process.on('SIGTERM', () => process.exit(0));
