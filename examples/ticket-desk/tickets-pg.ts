// The ticket desk's data in PostgreSQL, reached with a per-task database user (docs/vault.md):
// every tool call asks TaskCredentials for its task's leased credential (Vault's database engine
// created that user for the task; the broker revokes it when the task ends), connects as that user
// for the call alone and closes the connection after, so no session outlives the call when Vault
// drops the role. The operator creates the schema, its tables and the one role holding the desk's
// privileges with setUpDeskDatabase (as `postgres`); Vault's role statements (vaultRoleStatements)
// grant each per-task user that role and nothing else.
import { CredentialError, type TaskCredentials } from '@taskpass/verifier';
import pg from 'pg';
import type { TicketBackend, TicketOps, TicketSession } from './tickets.ts';
import { seedTickets, type Ticket } from './tickets.ts';

/** Where the desk's PostgreSQL is (trust or password auth for `postgres`, the set-up user). */
export interface PgLocation {
  host?: string;
  port?: number;
  database?: string;
}

const DEFAULT_LOCATION = { host: '127.0.0.1', port: 5432, database: 'postgres' } as const;

/** A schema name the desk accepts: a plain lower-case identifier (it is also part of the role name). */
const SCHEMA_NAME = /^[a-z_][a-z0-9_]{0,50}$/;

const ident = (s: string) => `"${s.replaceAll('"', '""')}"`;

/** The role holding the desk's privileges on `schema`; per-task users are made members of it. */
export const deskRoleOf = (schema: string) => `${schema}_desk`;

function checkSchema(schema: string): void {
  if (!SCHEMA_NAME.test(schema))
    throw new Error(`schema must match ${SCHEMA_NAME}, not ${JSON.stringify(schema)}`);
}

async function asAdmin<T>(
  where: PgLocation & { user?: string },
  fn: (c: pg.Client) => Promise<T>,
): Promise<T> {
  const c = new pg.Client({ ...DEFAULT_LOCATION, user: 'postgres', ...where });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

/** Runs one statement on a connection of its own, as `postgres` unless `where.user` says otherwise. */
export function pgQuery<T extends pg.QueryResultRow>(
  text: string,
  values: unknown[] = [],
  where: PgLocation & { user?: string } = {},
): Promise<T[]> {
  return asAdmin(where, async (c) => (await c.query<T>(text, values)).rows);
}

/** Is there a PostgreSQL role of this name (e.g. a per-task user Vault created)? */
export async function pgRoleExists(name: string, where: PgLocation = {}): Promise<boolean> {
  return (await pgQuery('SELECT 1 FROM pg_roles WHERE rolname = $1', [name], where)).length === 1;
}

/**
 * Creates the desk's schema, its tables with the seeded tickets, and the role `<schema>_desk` that
 * may read and write them (and nothing else). Run once by the operator as `postgres`. `adminRole`
 * (Vault's connection user) is given that role WITH ADMIN OPTION so that Vault can grant it to the
 * per-task users it creates. Returns `drop()`, which removes all of it again.
 */
export async function setUpDeskDatabase(opts: {
  schema: string;
  adminRole?: string;
  location?: PgLocation & { user?: string };
}): Promise<{ schema: string; role: string; drop(): Promise<void> }> {
  const { schema } = opts;
  checkSchema(schema);
  const role = deskRoleOf(schema);
  const s = ident(schema);
  const where = opts.location ?? {};
  await asAdmin(where, async (c) => {
    await c.query('BEGIN');
    await c.query(`CREATE SCHEMA ${s}`);
    await c.query(`CREATE TABLE ${s}.tickets (
      id text PRIMARY KEY,
      customer text NOT NULL,
      subject text NOT NULL,
      status text NOT NULL CHECK (status IN ('open', 'pending', 'closed')),
      order_id text NOT NULL,
      amount numeric(12, 2) NOT NULL,
      currency text NOT NULL,
      refunded numeric(12, 2) NOT NULL DEFAULT 0 CHECK (refunded >= 0 AND refunded <= amount)
    )`);
    await c.query(`CREATE TABLE ${s}.comments (
      seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
      ticket_id text NOT NULL REFERENCES ${s}.tickets (id) ON DELETE CASCADE,
      author text NOT NULL,
      body text NOT NULL,
      at timestamptz NOT NULL DEFAULT now()
    )`);
    for (const t of seedTickets().values()) {
      await c.query(
        `INSERT INTO ${s}.tickets (id, customer, subject, status, order_id, amount, currency, refunded)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
        [
          t.id,
          t.customer,
          t.subject,
          t.status,
          t.order.id,
          t.order.amount,
          t.order.currency,
          t.order.refunded,
        ],
      );
    }
    await c.query(`CREATE ROLE ${ident(role)} NOLOGIN`);
    await c.query(`GRANT USAGE ON SCHEMA ${s} TO ${ident(role)}`);
    await c.query(`GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA ${s} TO ${ident(role)}`);
    await c.query(`GRANT USAGE ON ALL SEQUENCES IN SCHEMA ${s} TO ${ident(role)}`);
    if (opts.adminRole) await c.query(`GRANT ${ident(role)} TO ${ident(opts.adminRole)} WITH ADMIN OPTION`);
    await c.query('COMMIT');
  });
  return {
    schema,
    role,
    drop: () =>
      asAdmin(where, async (c) => {
        await c.query(`DROP SCHEMA IF EXISTS ${s} CASCADE`);
        await c.query(`DROP ROLE IF EXISTS ${ident(role)}`);
      }),
  };
}

/**
 * The statements of Vault's database role for the desk (`database/roles/ticket-desk`): a login user
 * that expires with its lease and is a member of the desk's role on `schema` only; revocation takes
 * the membership back and drops the user.
 */
export function vaultRoleStatements(schema: string): { creation: string[]; revocation: string[] } {
  checkSchema(schema);
  const role = ident(deskRoleOf(schema));
  return {
    creation: [
      `CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';`,
      `GRANT ${role} TO "{{name}}";`,
    ],
    revocation: [`REVOKE ${role} FROM "{{name}}";`, `DROP ROLE IF EXISTS "{{name}}";`],
  };
}

/** Options of {@link PgTicketDesk}. */
export interface PgTicketDeskOptions {
  /** The schema setUpDeskDatabase created. */
  schema: string;
  location?: PgLocation;
  /** Where each call's database user comes from. */
  credentials: TaskCredentials;
  /** The Vault path of the credential; default: the one the call's tool rule names. */
  path?: string;
  /** Connecting as the task's user, ms (default 5000). */
  connectTimeoutMs?: number;
}

/** The ticket desk on PostgreSQL: one connection per call, as the call's per-task database user. */
export class PgTicketDesk implements TicketBackend {
  readonly #o: PgTicketDeskOptions;

  constructor(opts: PgTicketDeskOptions) {
    checkSchema(opts.schema);
    this.#o = opts;
  }

  get schema(): string {
    return this.#o.schema;
  }

  async open(extra: Parameters<TaskCredentials['forCall']>[0]): Promise<TicketSession> {
    // Throws CredentialError (code and status of the broker's answer) when there is no credential.
    const credential = await this.#o.credentials.forCall(extra, this.#o.path);
    const { username, password } = credential.data;
    if (typeof username !== 'string' || typeof password !== 'string') {
      throw new CredentialError(
        'TASKPASS_CREDENTIAL_UNAVAILABLE',
        503,
        `the credential at ${credential.path} has no username and password`,
      );
    }
    const client = new pg.Client({
      ...DEFAULT_LOCATION,
      ...this.#o.location,
      user: username,
      password,
      connectionTimeoutMillis: this.#o.connectTimeoutMs ?? 5000,
      application_name: 'taskpass-ticket-desk',
    });
    // A connection error must not crash the process; the query that fails reports it.
    client.on('error', () => {});
    await client.connect();
    return { ops: new PgTicketOps(client, this.#o.schema), dbUser: username, close: () => client.end() };
  }
}

interface TicketRow {
  id: string;
  customer: string;
  subject: string;
  status: Ticket['status'];
  order_id: string;
  amount: string;
  currency: string;
  refunded: string;
}

/** The desk's operations on one connection; the same rules and messages as the in-memory desk. */
class PgTicketOps implements TicketOps {
  readonly #c: pg.Client;
  readonly #t: string;
  readonly #cm: string;

  constructor(client: pg.Client, schema: string) {
    this.#c = client;
    this.#t = `${ident(schema)}.tickets`;
    this.#cm = `${ident(schema)}.comments`;
  }

  async list(status?: Ticket['status']): Promise<Pick<Ticket, 'id' | 'subject' | 'status'>[]> {
    const r = await this.#c.query<Pick<Ticket, 'id' | 'subject' | 'status'>>(
      `SELECT id, subject, status FROM ${this.#t} WHERE $1::text IS NULL OR status = $1 ORDER BY id`,
      [status ?? null],
    );
    return r.rows;
  }

  async get(id: string): Promise<Ticket> {
    const r = await this.#c.query<TicketRow>(`SELECT * FROM ${this.#t} WHERE id = $1`, [id]);
    const row = r.rows[0];
    if (!row) throw new Error(`no ticket ${id}`);
    const comments = await this.#c.query<{ author: string; body: string; at: Date }>(
      `SELECT author, body, at FROM ${this.#cm} WHERE ticket_id = $1 ORDER BY seq`,
      [id],
    );
    return {
      id: row.id,
      customer: row.customer,
      subject: row.subject,
      status: row.status,
      order: {
        id: row.order_id,
        amount: Number(row.amount),
        currency: row.currency,
        refunded: Number(row.refunded),
      },
      comments: comments.rows.map((c) => ({ by: c.author, text: c.body, at: c.at.toISOString() })),
    };
  }

  comment(id: string, by: string, text: string): Promise<Ticket> {
    return this.#tx(id, async () => {
      await this.#comment(id, by, text);
    });
  }

  close(id: string, by: string): Promise<Ticket> {
    return this.#tx(id, async () => {
      await this.#comment(id, by, 'closed');
      await this.#c.query(`UPDATE ${this.#t} SET status = 'closed' WHERE id = $1`, [id]);
    });
  }

  refund(id: string, amount: number, by: string): Promise<Ticket> {
    return this.#tx(id, async (row) => {
      const left = Number(row.amount) - Number(row.refunded);
      if (!(amount > 0) || amount > left) throw new Error(`refund must be between 0 and ${left.toFixed(2)}`);
      await this.#c.query(`UPDATE ${this.#t} SET refunded = refunded + $2 WHERE id = $1`, [id, amount]);
      await this.#comment(id, by, `refunded ${amount.toFixed(2)} ${row.currency}`);
    });
  }

  async delete(id: string): Promise<void> {
    const r = await this.#c.query(`DELETE FROM ${this.#t} WHERE id = $1`, [id]);
    if (r.rowCount === 0) throw new Error(`no ticket ${id}`);
  }

  async #comment(id: string, by: string, text: string): Promise<void> {
    await this.#c.query(`INSERT INTO ${this.#cm} (ticket_id, author, body) VALUES ($1, $2, $3)`, [
      id,
      by,
      text,
    ]);
    await this.#c.query(`UPDATE ${this.#t} SET status = 'pending' WHERE id = $1 AND status = 'open'`, [id]);
  }

  /** Runs `fn` on the locked ticket in one transaction, then reads it back. */
  async #tx(id: string, fn: (row: TicketRow) => Promise<void>): Promise<Ticket> {
    await this.#c.query('BEGIN');
    try {
      const r = await this.#c.query<TicketRow>(`SELECT * FROM ${this.#t} WHERE id = $1 FOR UPDATE`, [id]);
      const row = r.rows[0];
      if (!row) throw new Error(`no ticket ${id}`);
      await fn(row);
      await this.#c.query('COMMIT');
    } catch (e) {
      await this.#c.query('ROLLBACK').catch(() => {});
      throw e;
    }
    return this.get(id);
  }
}
