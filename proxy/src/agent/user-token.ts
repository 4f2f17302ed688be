// Where the user's token comes from each time the proxy opens a task: a file (re-read, so a helper
// can refresh it), an environment variable, an OIDC device login (kept while it stays valid), or
// nobody (an autonomous task).
import { readFile } from 'node:fs/promises';
import type { ProxyConfig } from './config.ts';
import { type DevicePrompt, deviceLogin } from './device-login.ts';
import { ProxyError } from './errors.ts';

// A device-login token is not reused when it expires within this long: the broker needs it valid.
const REUSE_MARGIN_MS = 60_000;

/** Hands out the user's token (undefined for an autonomous task). */
export type UserTokenSource = () => Promise<string | undefined>;

function unavailable(message: string): ProxyError {
  return new ProxyError('TASKPASS_PROXY_USER_TOKEN_UNAVAILABLE', message);
}

/** The prompt of a device login as a person reads it (on stderr). */
export function devicePromptText(p: DevicePrompt): string {
  const minutes = Math.max(1, Math.round(p.expiresInSec / 60));
  return [
    'Taskpass: sign in to let this agent act for you.',
    `  Open ${p.verificationUri} and enter the code ${p.userCode}`,
    ...(p.verificationUriComplete ? [`  (or open ${p.verificationUriComplete})`] : []),
    `  The code expires in ${minutes} minute${minutes === 1 ? '' : 's'}.`,
  ].join('\n');
}

/**
 * The user-token source for a configuration. `prompt` shows a device login's instructions (the
 * CLI writes to stderr: stdout is the MCP channel).
 *
 * @example
 * ```ts
 * const userToken = userTokenSource(config.user, process.env, (s) => process.stderr.write(`${s}\n`));
 * const task = await broker.openTask({ purpose, userToken: await userToken() });
 * ```
 */
export function userTokenSource(
  user: ProxyConfig['user'],
  env: NodeJS.ProcessEnv,
  prompt: (text: string) => void,
  opts: { fetch?: typeof fetch; now?: () => number } = {},
): UserTokenSource {
  const now = opts.now ?? Date.now;
  if (user.tokenFile) {
    const file = user.tokenFile;
    return async () => {
      let text: string;
      try {
        text = await readFile(file, 'utf8');
      } catch (e) {
        throw unavailable(`user.tokenFile: cannot read ${file}: ${(e as Error).message}`);
      }
      const token = text.trim();
      if (!token) throw unavailable(`user.tokenFile: ${file} is empty`);
      return token;
    };
  }
  if (user.tokenEnv) {
    const name = user.tokenEnv;
    return async () => {
      const token = env[name]?.trim();
      if (!token) throw unavailable(`user.tokenEnv: the environment variable ${name} is not set`);
      return token;
    };
  }
  if (user.oidc) {
    const oidc = user.oidc;
    let cached: { token: string; expiresAt: Date | undefined } | undefined;
    let inFlight: Promise<string> | undefined;
    return async () => {
      if (cached?.expiresAt && cached.expiresAt.getTime() - REUSE_MARGIN_MS > now()) return cached.token;
      inFlight ??= deviceLogin({
        issuer: oidc.issuer,
        clientId: oidc.clientId,
        scope: oidc.scope,
        token: oidc.token,
        ...(oidc.timeoutMs !== undefined ? { timeoutMs: oidc.timeoutMs } : {}),
        ...(opts.fetch ? { fetch: opts.fetch } : {}),
        prompt: (p) => prompt(devicePromptText(p)),
      })
        .then((r) => {
          cached = r;
          return r.token;
        })
        .finally(() => {
          inFlight = undefined;
        });
      return inFlight;
    };
  }
  return async () => undefined;
}
