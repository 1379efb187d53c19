// The OAuth 2.0 provider Mailbridge's tests sign in against.
//
// oauth2-mock-server does the real protocol work: /authorize (PKCE S256 challenges are kept),
// /token for authorization codes (the verifier is checked against the challenge), JWT ID
// tokens signed with its JWKS. It is stateless about accounts, so this wrapper adds what
// the tests need on top:
//   - which account signs in (the login_hint, or one forced by /control/next-account), put
//     into the ID token and /userinfo as `email`;
//   - a record of every access and refresh token, so /introspect answers per token (Dovecot's
//     passdb oauth2 asks it) and /revoke really revokes;
//   - the refresh grant with Google's behaviours: the response omits refresh_token (keep the
//     old one), or rotates it, and a revoked refresh token gets `invalid_grant`;
//   - switches for failure cases (access denied at consent, a narrower scope, no refresh
//     token on the code exchange, token endpoint errors) and counters the tests assert on;
//   - Google Workspace service accounts with domain-wide delegation: /control/service-account
//     makes a key (an RSA pair; the JSON key file Google would give) and records what the
//     Workspace admin delegated; the JWT bearer grant (RFC 7523) is checked with jose — the
//     assertion's RS256 signature against the key's public half, `iss`, `aud` (this token
//     endpoint), `iat` and a short `exp`, `sub` in the delegated domain, the delegated scopes —
//     and answered as Google answers;
//   - Microsoft's habits when asked (`claims: 'microsoft'`): ID tokens that name the account
//     by `preferred_username` without `email`, and error bodies with AADSTS codes
//     (`consentError`, `refreshError`), as login.microsoftonline.com writes them.
//
// Prints one JSON line {"url": "..."} when it listens; stops on SIGTERM or stdin closing.

import http from 'node:http';
import { randomBytes } from 'node:crypto';
import { generateKeyPairSync } from 'node:crypto';
import { jwtVerify } from 'jose';
import { OAuth2Issuer, OAuth2Service } from 'oauth2-mock-server';

const issuer = new OAuth2Issuer();
await issuer.keys.generate('RS256');
const service = new OAuth2Service(issuer);

const accessTokens = new Map(); // token -> { email, scope, exp (ms), revoked }
const refreshTokens = new Map(); // token -> { email, scope, revoked }
const codes = new Map(); // code -> { email, scope }
const defaults = () => ({
  nextAccount: null, // sign in as this account once, whatever the login_hint says
  denyConsent: false, // answer /authorize with error=access_denied
  narrowScope: false, // grant only "openid email"
  omitRefreshOnCode: false, // code exchange answers without a refresh token
  omitIdToken: false, // code exchange answers without an ID token (identity from /userinfo)
  refresh: 'omit', // 'omit' (Google: keep the old one) | 'rotate'
  tokenStatus: 200, // a 5xx here makes the token endpoint fail transiently
  expiresIn: 3600,
  refreshDelayMs: 0, // a slow refresh, so concurrent callers overlap
  failRefreshes: 0, // answer this many refresh grants with HTTP 503 first
  claims: 'google', // 'google' (email, email_verified) | 'microsoft' (preferred_username, tid, oid)
  consentError: null, // { error, error_description }: /authorize redirects back with it
  refreshError: null, // { error, error_description }: refresh grants answer HTTP 400 with it
});
let mode = defaults();
const stats = { refreshGrants: 0, codeGrants: 0, revocations: [], introspections: 0, jwtGrants: 0 };
// client_email -> { publicKey, domain, scopes (delegated), delegated (bool) }
const serviceAccounts = new Map();

const opaque = (prefix) => `${prefix}${randomBytes(24).toString('base64url')}`;
const scopeFor = (requested) => (mode.narrowScope ? 'openid email' : requested ?? 'openid email');

service.on('beforeAuthorizeRedirect', (redirect, req) => {
  const q = new URL(req.url, 'http://x').searchParams;
  const code = redirect.url.searchParams.get('code');
  if (mode.denyConsent || mode.consentError) {
    redirect.url.searchParams.delete('code');
    const e = mode.consentError ?? { error: 'access_denied' };
    redirect.url.searchParams.set('error', e.error);
    if (e.error_description) redirect.url.searchParams.set('error_description', e.error_description);
    return;
  }
  const email = mode.nextAccount ?? q.get('login_hint') ?? 'johndoe@example.com';
  mode.nextAccount = null;
  codes.set(code, { email, scope: scopeFor(q.get('scope')) });
});

// Both the access token and the ID token of a code exchange name the account.
service.on('beforeTokenSigning', (token, req) => {
  const grant = codes.get(req.body?.code);
  if (grant && mode.claims === 'microsoft') {
    // Microsoft identity platform v2.0: the sign-in name; `email` only when the account has one.
    token.payload.preferred_username = grant.email;
    token.payload.tid = '9188040d-6c67-4c5b-b112-36a304b66dad';
    token.payload.oid = `oid-${grant.email}`;
    token.payload.sub = `sub-${grant.email}`;
  } else if (grant) {
    token.payload.email = grant.email;
    token.payload.email_verified = true;
    token.payload.sub = `sub-${grant.email}`;
  }
});

service.on('beforeResponse', (response, req) => {
  const grant = codes.get(req.body?.code);
  if (!grant || response.statusCode !== 200) return;
  codes.delete(req.body.code);
  stats.codeGrants += 1;
  const body = response.body;
  body.scope = grant.scope;
  body.expires_in = mode.expiresIn;
  accessTokens.set(body.access_token, { email: grant.email, scope: grant.scope, exp: Date.now() + mode.expiresIn * 1000, revoked: false });
  if (mode.omitIdToken) delete body.id_token;
  if (mode.omitRefreshOnCode) {
    delete body.refresh_token;
  } else {
    refreshTokens.set(body.refresh_token, { email: grant.email, scope: grant.scope, revoked: false });
  }
});

service.on('beforeUserinfo', (response, req) => {
  const bearer = (req.headers.authorization ?? '').replace(/^Bearer /i, '');
  const t = accessTokens.get(bearer);
  if (!t || t.revoked || t.exp < Date.now()) {
    response.statusCode = 401;
    response.body = { error: 'invalid_token' };
    return;
  }
  response.body = { sub: `sub-${t.email}`, email: t.email, email_verified: true };
});

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      const type = req.headers['content-type'] ?? '';
      try {
        if (type.includes('json')) resolve(text ? JSON.parse(text) : {});
        else resolve(Object.fromEntries(new URLSearchParams(text)));
      } catch (e) {
        reject(e);
      }
    });
    req.on('error', reject);
  });
}

function json(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify(body));
}

async function refreshGrant(res, body) {
  stats.refreshGrants += 1;
  if (mode.refreshDelayMs) await new Promise((r) => setTimeout(r, mode.refreshDelayMs));
  if (mode.failRefreshes > 0) {
    mode.failRefreshes -= 1;
    return json(res, 503, { error: 'temporarily_unavailable' });
  }
  if (mode.tokenStatus !== 200) return json(res, mode.tokenStatus, { error: 'server_error' });
  if (mode.refreshError) return json(res, 400, { ...mode.refreshError, error_codes: [], timestamp: new Date().toISOString() });
  const old = refreshTokens.get(body.refresh_token);
  if (!old || old.revoked) {
    return json(res, 400, { error: 'invalid_grant', error_description: 'Token has been expired or revoked.' });
  }
  const access = opaque('at-');
  accessTokens.set(access, { email: old.email, scope: old.scope, exp: Date.now() + mode.expiresIn * 1000, revoked: false });
  const answer = { access_token: access, token_type: 'Bearer', expires_in: mode.expiresIn, scope: old.scope };
  if (mode.refresh === 'rotate') {
    old.revoked = true;
    const fresh = opaque('rt-');
    refreshTokens.set(fresh, { ...old, revoked: false });
    answer.refresh_token = fresh;
  }
  return json(res, 200, answer);
}

// RFC 7523 §2.1 as Google does it: the assertion is the client's credential, and `sub` the
// user it acts for.
async function jwtBearerGrant(res, body) {
  stats.jwtGrants += 1;
  const unverified = JSON.parse(Buffer.from((body.assertion ?? '').split('.')[1] ?? '', 'base64url').toString('utf8') || '{}');
  const account = serviceAccounts.get(unverified.iss);
  if (!account) return json(res, 401, { error: 'invalid_client', error_description: 'The OAuth client was not found.' });
  let claims;
  try {
    ({ payload: claims } = await jwtVerify(body.assertion, account.publicKey, {
      algorithms: ['RS256'],
      issuer: unverified.iss,
      audience: `${issuer.url}/token`,
      requiredClaims: ['iat', 'exp', 'sub', 'scope'],
    }));
  } catch (e) {
    return json(res, 400, { error: 'invalid_grant', error_description: `Invalid JWT Signature or claims: ${e.code ?? e.message}` });
  }
  const now = Math.floor(Date.now() / 1000);
  if (claims.exp - claims.iat > 3600 || claims.iat > now + 300) {
    return json(res, 400, { error: 'invalid_grant', error_description: 'Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.' });
  }
  const scopes = String(claims.scope).split(' ');
  if (!account.delegated || !scopes.every((s) => account.scopes.includes(s))) {
    return json(res, 401, { error: 'unauthorized_client', error_description: 'Client is unauthorized to retrieve access tokens using this method, or client not authorized for any of the scopes requested.' });
  }
  if (!String(claims.sub).toLowerCase().endsWith(`@${account.domain}`)) {
    return json(res, 400, { error: 'invalid_grant', error_description: 'Invalid email or User ID' });
  }
  const access = opaque('ya29.sa-');
  accessTokens.set(access, { email: claims.sub, scope: claims.scope, exp: Date.now() + 3600 * 1000, revoked: false });
  return json(res, 200, { access_token: access, token_type: 'Bearer', expires_in: 3599 });
}

async function control(req, res, path) {
  const body = req.method === 'POST' ? await readBody(req) : {};
  switch (path) {
    case '/control/mode':
      Object.assign(mode, body);
      return json(res, 200, mode);
    case '/control/reset':
      mode = defaults();
      return json(res, 200, mode);
    case '/control/next-account':
      mode.nextAccount = body.email;
      return json(res, 200, mode);
    case '/control/revoke-account':
    case '/control/expire-account': {
      for (const store of [accessTokens, refreshTokens]) {
        for (const t of store.values()) {
          if (t.email !== body.email) continue;
          if (path === '/control/revoke-account') t.revoked = true;
          else if (store === accessTokens) t.exp = 0;
        }
      }
      return json(res, 200, {});
    }
    case '/control/stats':
      return json(res, 200, stats);
    case '/control/service-account': {
      // A new service account of a Workspace `domain`, delegated `scopes` (or none yet).
      const { publicKey, privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
      const id = randomBytes(8).toString('hex');
      const email = `mailbridge-${id}@test-project.iam.gserviceaccount.com`;
      serviceAccounts.set(email, {
        publicKey,
        domain: body.domain ?? 'example.com',
        scopes: body.scopes ?? ['https://mail.google.com/'],
        delegated: body.delegated ?? true,
      });
      return json(res, 200, {
        type: 'service_account',
        project_id: 'test-project',
        private_key_id: id,
        private_key: privateKey.export({ type: 'pkcs8', format: 'pem' }),
        client_email: email,
        client_id: String(BigInt(`0x${id}`)),
        auth_uri: `${issuer.url}/authorize`,
        token_uri: `${issuer.url}/token`,
      });
    }
    case '/control/delegation': {
      // The Workspace admin grants or withdraws domain-wide delegation.
      const account = serviceAccounts.get(body.client_email);
      if (!account) return json(res, 404, { error: 'no such service account' });
      account.delegated = body.delegated;
      return json(res, 200, {});
    }
    default:
      return json(res, 404, { error: 'no such control' });
  }
}

const server = http.createServer(async (req, res) => {
  try {
    const path = new URL(req.url, 'http://x').pathname;
    if (path.startsWith('/control/')) return await control(req, res, path);
    if (req.method === 'POST' && path === '/introspect') {
      stats.introspections += 1;
      const { token } = await readBody(req);
      const t = accessTokens.get(token);
      if (!t || t.revoked || t.exp < Date.now()) return json(res, 200, { active: false });
      return json(res, 200, { active: true, email: t.email, username: t.email, scope: t.scope, exp: Math.floor(t.exp / 1000), token_type: 'Bearer' });
    }
    if (req.method === 'POST' && path === '/revoke') {
      const { token } = await readBody(req);
      stats.revocations.push(token);
      for (const store of [accessTokens, refreshTokens]) {
        const t = store.get(token);
        if (t) {
          // Revoking either token of a grant revokes the grant (Google's behaviour).
          for (const u of [...accessTokens.values(), ...refreshTokens.values()]) {
            if (u.email === t.email) u.revoked = true;
          }
        }
      }
      return json(res, 200, {});
    }
    if (req.method === 'POST' && path === '/token') {
      // Peek at the grant type without consuming the body the mock needs.
      const raw = await new Promise((resolve) => {
        const chunks = [];
        req.on('data', (c) => chunks.push(c));
        req.on('end', () => resolve(Buffer.concat(chunks)));
      });
      const body = Object.fromEntries(new URLSearchParams(raw.toString('utf8')));
      if (body.grant_type === 'refresh_token') return await refreshGrant(res, body);
      if (body.grant_type === 'urn:ietf:params:oauth:grant-type:jwt-bearer') return await jwtBearerGrant(res, body);
      if (mode.tokenStatus !== 200) return json(res, mode.tokenStatus, { error: 'server_error' });
      const { Readable } = await import('node:stream');
      const replay = Readable.from([raw]);
      Object.assign(replay, { headers: req.headers, method: req.method, url: req.url });
      replay.headers['content-length'] = String(raw.length);
      return service.requestHandler(replay, res);
    }
    return service.requestHandler(req, res);
  } catch (e) {
    json(res, 500, { error: 'server_error', error_description: String(e) });
  }
});

server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  issuer.url = `http://127.0.0.1:${port}`;
  process.stdout.write(`${JSON.stringify({ url: issuer.url })}\n`);
});
const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.stdin.on('end', stop);
process.stdin.resume();
