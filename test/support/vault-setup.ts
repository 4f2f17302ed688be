// What an operator sets up in Vault for a broker (docs/vault.md), done as root on a test's Vault:
// a Transit mount, a policy for the broker's keys, and the JWT auth method trusting SPIRE's JWT
// bundle with a role bound to the broker's SPIFFE ID. Used by the Vault e2e tests and the demo.
import { createPublicKey, type JsonWebKey } from 'node:crypto';
import type { SpireHarness } from './spire.ts';
import type { OwnVault } from './vault-server.ts';

/** The audience of the broker's JWT-SVID for Vault (the role's `bound_audiences`). */
export const VAULT_AUDIENCE = 'vault';
export const BROKER_ROLE = 'taskpass-broker';

const BROKER_POLICY = `
path "transit/keys/taskpass*" { capabilities = ["read", "create", "update"] }
path "transit/sign/taskpass*" { capabilities = ["update"] }
`;

/** SPIRE's JWT-SVID signing keys as PEM (`spire-server bundle show -format spiffe`). */
async function jwtBundlePems(spire: SpireHarness): Promise<string[]> {
  const set = JSON.parse(await spire.serverCli('bundle', 'show', '-format', 'spiffe')) as {
    keys: (JsonWebKey & { use?: string })[];
  };
  return set.keys
    .filter((k) => k.use === 'jwt-svid')
    .map((k) => {
      const { use: _u, kid: _k, ...jwk } = k as JsonWebKey & { use?: string; kid?: string };
      return createPublicKey({ key: jwk, format: 'jwk' }).export({ type: 'spki', format: 'pem' }).toString();
    });
}

/**
 * Configures `vault` for the broker `brokerId` and returns the broker configuration that uses it
 * (`signing` by Transit, `vault` with JWT auth).
 */
export async function setUpBrokerVault(
  vault: OwnVault,
  spire: SpireHarness,
  brokerId: string,
): Promise<Record<string, unknown>> {
  await vault.api('POST', 'sys/mounts/transit', { type: 'transit' });
  await vault.api('PUT', `sys/policies/acl/${BROKER_ROLE}`, { policy: BROKER_POLICY });
  await vault.api('POST', 'sys/auth/jwt', { type: 'jwt' });
  await vault.api('POST', 'auth/jwt/config', { jwt_validation_pubkeys: await jwtBundlePems(spire) });
  await vault.api('POST', `auth/jwt/role/${BROKER_ROLE}`, {
    role_type: 'jwt',
    bound_audiences: [VAULT_AUDIENCE],
    bound_subject: brokerId,
    user_claim: 'sub',
    token_policies: [BROKER_ROLE],
    token_ttl: '5m',
    token_max_ttl: '30m',
  });
  return {
    signing: { kind: 'vault-transit', key: 'taskpass', mount: 'transit' },
    vault: {
      address: vault.address,
      auth: { method: 'jwt', role: BROKER_ROLE, audience: VAULT_AUDIENCE },
    },
  };
}
