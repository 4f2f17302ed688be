// What an operator sets up in Vault for a broker (docs/vault.md), done as root on a test's Vault:
// a Transit mount, a policy for the broker's keys and leases, and the JWT auth method trusting
// SPIRE's JWT bundle with a role bound to the broker's SPIFFE ID; and, for the ticket desk on
// PostgreSQL, the database secrets engine whose role creates per-task users. Used by the Vault e2e
// tests, the stack (`vault: true`) and the demo (`--vault`).
import { createPublicKey, type JsonWebKey, randomUUID } from 'node:crypto';
import {
  type PgLocation,
  pgQuery,
  setUpDeskDatabase,
  vaultRoleStatements,
} from './ticket-desk/tickets-pg.ts';
import type { SpireHarness } from '../harness/spire.ts';
import type { OwnVault } from '../harness/vault.ts';

/** The audience of the broker's JWT-SVID for Vault (the role's `bound_audiences`). */
export const VAULT_AUDIENCE = 'vault';
export const BROKER_ROLE = 'taskpass-broker';

/** The Vault path of the ticket desk's per-task database users (its templates' `vault_secret`). */
export const DESK_SECRET_PATH = 'database/creds/ticket-desk';

// Transit for signing; the desk's database credentials, leased per task, renewed to the task's end
// and revoked when it ends.
const BROKER_POLICY = `
path "transit/keys/taskpass*" { capabilities = ["read", "create", "update"] }
path "transit/sign/taskpass*" { capabilities = ["update"] }
path "${DESK_SECRET_PATH}" { capabilities = ["read"] }
path "sys/leases/renew" { capabilities = ["update"] }
path "sys/leases/revoke" { capabilities = ["update"] }
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

/** The desk's database in PostgreSQL and Vault, as {@link setUpDeskDatabaseEngine} made it. */
export interface DeskDatabase {
  /** The desk's schema (unique per call). */
  readonly schema: string;
  /** Vault's connection user in PostgreSQL (CREATEROLE, admin of the desk's role). */
  readonly adminRole: string;
  /** Drops the schema, the desk's role, any per-task user Vault left, and Vault's admin user. */
  drop(): Promise<void>;
}

/**
 * The operator's set-up for the ticket desk on PostgreSQL with per-task users (docs/vault.md): as
 * `postgres`, a fresh schema with the seeded tables and its role (setUpDeskDatabase), and a login
 * for Vault that may create users and grant them that role; in Vault, the database engine
 * connected as that login and the role `ticket-desk` (vaultRoleStatements). The local PostgreSQL
 * uses trust auth, so the password given to Vault is not checked.
 */
export async function setUpDeskDatabaseEngine(
  vault: OwnVault,
  opts: { schema?: string; location?: PgLocation } = {},
): Promise<DeskDatabase> {
  const run = randomUUID().replaceAll('-', '').slice(0, 12);
  const schema = opts.schema ?? `taskpass_desk_${run}`;
  const adminRole = `taskpass_vault_${run}`;
  const where = { host: '127.0.0.1', port: 5432, database: 'postgres', ...opts.location };
  const asPostgres = (text: string, values: unknown[] = []) =>
    pgQuery<{ rolname: string }>(text, values, where);
  await asPostgres(`CREATE ROLE "${adminRole}" WITH LOGIN CREATEROLE PASSWORD 'unused'`);
  let desk: Awaited<ReturnType<typeof setUpDeskDatabase>> | undefined;
  const drop = async () => {
    if (desk) {
      // Per-task users still there (a lease not revoked yet): members of the desk's role, ours.
      const left = await asPostgres(
        `SELECT m.rolname FROM pg_auth_members a JOIN pg_roles g ON g.oid = a.roleid
           JOIN pg_roles m ON m.oid = a.member WHERE g.rolname = $1 AND m.rolname <> $2`,
        [desk.role, adminRole],
      );
      for (const { rolname } of left)
        await asPostgres(`DROP ROLE IF EXISTS "${rolname.replaceAll('"', '""')}"`);
      await desk.drop();
    }
    await asPostgres(`DROP ROLE IF EXISTS "${adminRole}"`);
  };
  try {
    desk = await setUpDeskDatabase({ schema, adminRole, location: where });
    const statements = vaultRoleStatements(schema);
    await vault.api('POST', 'sys/mounts/database', { type: 'database' });
    await vault.api('POST', 'database/config/taskpass-desk', {
      plugin_name: 'postgresql-database-plugin',
      connection_url: `postgresql://{{username}}:{{password}}@${where.host}:${where.port}/${where.database}?sslmode=disable`,
      username: adminRole,
      password: 'unused',
      allowed_roles: 'ticket-desk',
    });
    await vault.api('POST', 'database/roles/ticket-desk', {
      db_name: 'taskpass-desk',
      creation_statements: statements.creation,
      revocation_statements: statements.revocation,
      default_ttl: '1h',
      max_ttl: '2h',
    });
  } catch (e) {
    await drop().catch(() => {});
    throw e;
  }
  return { schema, adminRole, drop };
}
