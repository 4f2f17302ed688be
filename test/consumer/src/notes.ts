// What every MCP server of the consumer project shares, from the installed packages alone: the
// notes tools' declarations (the resource template and action class the broker's templates name),
// and Taskpass protection — the server's SPIFFE identity, the revocation feed, the verifier, the
// middleware in front of /mcp and the mTLS options. Each server file adds only its SDK's wiring.
//
// Environment: SPIFFE_ENDPOINT_SOCKET, BROKER_URL, BROKER_ISSUER, BROKER_ID, AUDIENCE, HINT.
import type { Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { createMtlsAgent, matchId, matchMemberOf, mtlsServerOptions } from '@taskpass/spiffe';
import { pickByHint, X509Source } from '@taskpass/spiffe/workload';
import { type CallAuth, createVerifier, RevocationFeedClient, taskpassMiddleware } from '@taskpass/verifier';

export const env = (name: string): string => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};

/**
 * The tools' metadata as both SDK generations take it (input schemas are added per SDK); `_meta`
 * names the resource template and action class the broker's templates speak of.
 */
export const NOTE_TOOLS = {
  read_note: {
    description: 'Reads a note.',
    annotations: { readOnlyHint: true },
    _meta: { 'dev.taskpass/resource': 'notes/{note_id}', 'dev.taskpass/action': 'read' },
  },
  delete_note: {
    description: 'Deletes a note.',
    annotations: { readOnlyHint: false, destructiveHint: true },
    _meta: { 'dev.taskpass/resource': 'notes/{note_id}', 'dev.taskpass/action': 'admin' },
  },
} as const;

export const NOTE_ID = /^[a-z0-9-]{1,32}$/;

/** What read_note answers: the note and who called, as the verifier established it. */
export const readNote = (noteId: string, who: CallAuth | undefined) => ({
  content: [
    { type: 'text' as const, text: JSON.stringify({ note_id: noteId, user: who?.user, agent: who?.agent }) },
  ],
});

/** Taskpass in front of an MCP server: identity, revocation feed, verifier, middleware, mTLS. */
export async function protection(opts: { requireMcpHeaders?: boolean } = {}) {
  const brokerUrl = env('BROKER_URL');
  const source = await X509Source.create({ picker: pickByHint(env('HINT')) });
  const toBroker = createMtlsAgent(source, matchId(env('BROKER_ID')));
  const feed = new RevocationFeedClient({ brokerUrl, dispatcher: toBroker });
  await feed.ready(10_000);
  const verifier = createVerifier({
    issuer: env('BROKER_ISSUER'),
    audience: env('AUDIENCE'),
    jwksUri: `${brokerUrl}/.well-known/jwks.json`,
    dispatcher: toBroker,
    // The verifier reads the same hints the agent learns from tools/list.
    tools: NOTE_TOOLS,
    revocation: feed,
    requireCertificateBinding: true,
    ...(opts.requireMcpHeaders ? { requireMcpHeaders: true } : {}),
  });
  return {
    guard: taskpassMiddleware(verifier),
    mtls: mtlsServerOptions(source, matchMemberOf(source.getX509Svid().id.trustDomain.name)),
    /** Listens on a free port, prints `{ "mcpUrl": … }` and closes everything on SIGTERM. */
    serve(server: Server): void {
      server.listen(0, '127.0.0.1', () => {
        const { port } = server.address() as AddressInfo;
        process.stdout.write(`${JSON.stringify({ mcpUrl: `https://127.0.0.1:${port}/mcp` })}\n`);
      });
      process.once('SIGTERM', () => {
        server.close();
        server.closeAllConnections();
        void Promise.all([feed.close(), toBroker.close(), source.close()]).then(() => process.exit(0));
      });
    },
  };
}
