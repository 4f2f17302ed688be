// The demo IdP as a compose service: examples/idp (its own ES256 key, discovery document, JWKS) on a
// fixed address, plus the demo user's ID token written to a file that only the agent container
// mounts. There is no login flow and no token endpoint on the network: the file stands in for
// "Alice signed in to the agent's app". The token is refreshed well before it expires.
//
// Environment: IDP_ISSUER (https://idp.taskpass.local), IDP_HOST (0.0.0.0), IDP_PORT (8080),
// USER_TOKEN_AUDIENCE (the broker's issuer), USER_TOKEN_FILE (/run/taskpass/idp/alice.jwt).
import { renameSync, writeFileSync } from 'node:fs';
import { startIdp } from '../../examples/idp/idp.ts';

const env = process.env;
const audience = env.USER_TOKEN_AUDIENCE ?? 'https://broker.taskpass.local:8443';
const file = env.USER_TOKEN_FILE ?? '/run/taskpass/idp/alice.jwt';
const TTL_SEC = 600;

const idp = await startIdp({
  issuer: env.IDP_ISSUER ?? 'https://idp.taskpass.local',
  host: env.IDP_HOST ?? '0.0.0.0',
  port: Number(env.IDP_PORT ?? 8080),
});

async function writeToken(): Promise<void> {
  const token = await idp.idToken({
    sub: 'alice',
    email: 'alice@taskpass.local',
    groups: ['support'],
    audience,
    ttlSec: TTL_SEC,
  });
  writeFileSync(`${file}.tmp`, `${token}\n`, { mode: 0o600 });
  renameSync(`${file}.tmp`, file);
  console.log(JSON.stringify({ event: 'user_token_written', sub: 'alice', file, ttlSec: TTL_SEC }));
}

await writeToken();
const timer = setInterval(() => void writeToken(), (TTL_SEC / 2) * 1000);
console.log(JSON.stringify({ event: 'idp_listening', issuer: idp.issuer, jwksUri: idp.jwksUri }));

const stop = (): void => {
  clearInterval(timer);
  void idp.close().then(() => process.exit(0));
};
process.once('SIGTERM', stop);
process.once('SIGINT', stop);
