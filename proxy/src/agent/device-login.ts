// The OIDC device authorization grant (RFC 8628): how a proxy launched by a desktop host — with no
// browser of its own and stdout taken by MCP — gets the user's token. It prints where to go and
// which code to enter on stderr, then polls the token endpoint until the person has signed in.
import { decodeJwt } from 'jose';
import { z } from 'zod';
import { isLoopbackHost } from '../guard/config.ts';
import { ProxyError } from './errors.ts';

/** What the person is asked to do (RFC 8628 §3.2). */
export interface DevicePrompt {
  verificationUri: string;
  verificationUriComplete?: string;
  userCode: string;
  expiresInSec: number;
}

/** Options of {@link deviceLogin}. */
export interface DeviceLoginOptions {
  issuer: string;
  clientId: string;
  scope: string;
  /** Which token of the token answer to return. */
  token: 'id_token' | 'access_token';
  /** Give up after this long (default: the device code's expiry). */
  timeoutMs?: number;
  /** Shows the prompt to the person (the CLI writes it on stderr). */
  prompt: (p: DevicePrompt) => void;
  signal?: AbortSignal;
  /** Test seam. Default the global fetch. */
  fetch?: typeof fetch;
}

/** The user's token from a device login. */
export interface DeviceLoginResult {
  token: string;
  /** When the token stops being useful (its `exp`, else the answer's `expires_in`). */
  expiresAt: Date | undefined;
}

const secureUrl = z.url().refine(
  (v) => {
    const u = new URL(v);
    return u.protocol === 'https:' || (u.protocol === 'http:' && isLoopbackHost(u.hostname));
  },
  { message: 'must be https (plain http only on loopback)' },
);

const Discovery = z.object({
  issuer: z.string(),
  device_authorization_endpoint: secureUrl,
  token_endpoint: secureUrl,
});

const DeviceAuthorization = z.object({
  device_code: z.string().min(1),
  user_code: z.string().min(1).max(64),
  verification_uri: secureUrl,
  verification_uri_complete: secureUrl.optional(),
  expires_in: z.number().int().positive(),
  interval: z.number().int().nonnegative().optional(),
});

const TokenAnswer = z.object({
  access_token: z.string().min(1).optional(),
  id_token: z.string().min(1).optional(),
  expires_in: z.number().int().nonnegative().optional(),
});

const OAuthError = z.object({ error: z.string(), error_description: z.string().optional() });

const DEVICE_GRANT = 'urn:ietf:params:oauth:grant-type:device_code';
// RFC 8628 §3.2 / §3.5: the default polling interval, and what slow_down adds to it.
const DEFAULT_INTERVAL_SEC = 5;
const SLOW_DOWN_SEC = 5;
// An IdP answering `interval: 0` does not make the proxy poll in a tight loop.
const MIN_INTERVAL_SEC = 1;

function failed(message: string, cause?: unknown): ProxyError {
  return new ProxyError('TASKPASS_PROXY_DEVICE_LOGIN_FAILED', message, cause ? { cause } : undefined);
}

async function json(res: Response, what: string): Promise<unknown> {
  try {
    return await res.json();
  } catch (e) {
    throw failed(`${what}: the answer (HTTP ${res.status}) is not JSON`, e);
  }
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

function expiryOf(token: string, expiresIn: number | undefined): Date | undefined {
  try {
    const { exp } = decodeJwt(token);
    if (typeof exp === 'number') return new Date(exp * 1000);
  } catch {
    // not a JWT (an opaque access token): the answer's expires_in is all there is
  }
  return expiresIn !== undefined ? new Date(Date.now() + expiresIn * 1000) : undefined;
}

/**
 * Runs a device login against `issuer` (its discovery document names the endpoints) and resolves
 * with the user's token. Throws TASKPASS_PROXY_DEVICE_LOGIN_FAILED when the person denies the
 * login, the code expires, or the IdP answers something unusable.
 *
 * @example
 * ```ts
 * const { token } = await deviceLogin({ issuer, clientId: 'taskpass-proxy', scope: 'openid', token: 'id_token',
 *   prompt: (p) => process.stderr.write(`open ${p.verificationUri} and enter ${p.userCode}\n`) });
 * ```
 */
export async function deviceLogin(opts: DeviceLoginOptions): Promise<DeviceLoginResult> {
  const http = opts.fetch ?? fetch;
  const issuer = opts.issuer.replace(/\/+$/, '');
  const call = async (url: string, init?: RequestInit) => {
    try {
      return await http(url, { ...init, ...(opts.signal ? { signal: opts.signal } : {}) });
    } catch (e) {
      throw failed(`${url} could not be reached: ${(e as Error).message}`, e);
    }
  };

  const discoveryUrl = `${issuer}/.well-known/openid-configuration`;
  const dres = await call(discoveryUrl, { headers: { accept: 'application/json' } });
  if (!dres.ok) throw failed(`discovery ${discoveryUrl} answered HTTP ${dres.status}`);
  const discovery = Discovery.safeParse(await json(dres, 'discovery'));
  if (!discovery.success) {
    throw failed(
      `discovery ${discoveryUrl}: ${discovery.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')} (does the IdP support the device flow?)`,
    );
  }
  // OIDC Discovery §4.3: the document must name the issuer it was fetched for.
  if (discovery.data.issuer.replace(/\/+$/, '') !== issuer) {
    throw failed(`discovery ${discoveryUrl} names issuer ${discovery.data.issuer}, not ${issuer}`);
  }

  const form = (fields: Record<string, string>) => ({
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' },
    body: new URLSearchParams(fields).toString(),
  });
  const ares = await call(
    discovery.data.device_authorization_endpoint,
    form({ client_id: opts.clientId, scope: opts.scope }),
  );
  const abody = await json(ares, 'device authorization');
  if (!ares.ok) {
    const err = OAuthError.safeParse(abody);
    throw failed(
      `device authorization refused (HTTP ${ares.status}${err.success ? `: ${err.data.error}${err.data.error_description ? ` — ${err.data.error_description}` : ''}` : ''})`,
    );
  }
  const auth = DeviceAuthorization.safeParse(abody);
  if (!auth.success) throw failed(`device authorization: unusable answer (${auth.error.issues[0]?.message})`);
  const a = auth.data;
  opts.prompt({
    verificationUri: a.verification_uri,
    ...(a.verification_uri_complete ? { verificationUriComplete: a.verification_uri_complete } : {}),
    userCode: a.user_code,
    expiresInSec: a.expires_in,
  });

  // A plain deadline, checked before each poll: on Node 20 a signal combined from
  // AbortSignal.timeout() with AbortSignal.any() can be garbage-collected and never fire.
  const deadline = Date.now() + Math.min(a.expires_in * 1000, opts.timeoutMs ?? Number.POSITIVE_INFINITY);
  let intervalSec = Math.max(a.interval ?? DEFAULT_INTERVAL_SEC, MIN_INTERVAL_SEC);
  for (;;) {
    const left = deadline - Date.now();
    if (left <= 0) throw failed('the login was not completed before the device code expired');
    await sleep(Math.min(intervalSec * 1000, left), opts.signal);
    const tres = await call(
      discovery.data.token_endpoint,
      form({ grant_type: DEVICE_GRANT, device_code: a.device_code, client_id: opts.clientId }),
    );
    const tbody = await json(tres, 'token');
    if (tres.ok) {
      const t = TokenAnswer.safeParse(tbody);
      const token = t.success ? t.data[opts.token] : undefined;
      if (!token) throw failed(`the token answer holds no ${opts.token}`);
      return { token, expiresAt: expiryOf(token, t.success ? t.data.expires_in : undefined) };
    }
    const err = OAuthError.safeParse(tbody);
    const code = err.success ? err.data.error : `HTTP ${tres.status}`;
    if (code === 'authorization_pending') continue;
    if (code === 'slow_down') {
      intervalSec += SLOW_DOWN_SEC;
      continue;
    }
    if (code === 'access_denied') throw failed('the person declined the login');
    if (code === 'expired_token') throw failed('the device code expired before the login was completed');
    throw failed(
      `the token endpoint refused: ${code}${err.success && err.data.error_description ? ` — ${err.data.error_description}` : ''}`,
    );
  }
}
