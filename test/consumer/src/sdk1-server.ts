// An MCP server on @modelcontextprotocol/sdk 1.x protected by @taskpass/verifier, as a server author
// writes it from the installed packages alone (no repository code). Run by test/packages.e2e.test.ts
// with plain `node`; prints one JSON line `{ "mcpUrl": … }` once it serves, and runs until SIGTERM.
//
// Environment: SPIFFE_ENDPOINT_SOCKET, BROKER_URL, BROKER_ISSUER, BROKER_ID, AUDIENCE, HINT.
import { createServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { createMtlsAgent, matchId, matchMemberOf, mtlsServerOptions } from '@taskpass/spiffe';
import { pickByHint, X509Source } from '@taskpass/spiffe/workload';
import { callerOf, createVerifier, RevocationFeedClient, taskpassMiddleware } from '@taskpass/verifier';
import { z } from 'zod';

const env = (name: string): string => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const brokerUrl = env('BROKER_URL');
const audience = env('AUDIENCE');

const tools = {
  read_note: {
    description: 'Reads a note.',
    inputSchema: { note_id: z.string().regex(/^[a-z0-9-]{1,32}$/) },
    annotations: { readOnlyHint: true },
    _meta: { 'dev.taskpass/resource': 'notes/{note_id}', 'dev.taskpass/action': 'read' },
  },
  delete_note: {
    description: 'Deletes a note.',
    inputSchema: { note_id: z.string().regex(/^[a-z0-9-]{1,32}$/) },
    annotations: { readOnlyHint: false, destructiveHint: true },
    _meta: { 'dev.taskpass/resource': 'notes/{note_id}', 'dev.taskpass/action': 'admin' },
  },
} as const;

const source = await X509Source.create({ picker: pickByHint(env('HINT')) });
const toBroker = createMtlsAgent(source, matchId(env('BROKER_ID')));
const feed = new RevocationFeedClient({ brokerUrl, dispatcher: toBroker });
await feed.ready(10_000);
const verifier = createVerifier({
  issuer: env('BROKER_ISSUER'),
  audience,
  jwksUri: `${brokerUrl}/.well-known/jwks.json`,
  dispatcher: toBroker,
  tools,
  revocation: feed,
  requireCertificateBinding: true,
});
const guard = taskpassMiddleware(verifier);
const mtls = mtlsServerOptions(source, matchMemberOf(source.getX509Svid().id.trustDomain.name));

const server = createServer(mtls.options, (req, res) => {
  if ((req.url ?? '/').split('?')[0] !== '/mcp') {
    res.writeHead(404).end();
    return;
  }
  void guard(req, res, async () => {
    const mcp = new McpServer({ name: 'notes', version: '1.0.0' });
    mcp.registerTool('read_note', tools.read_note, async ({ note_id }, extra) => {
      const who = callerOf(extra);
      return {
        content: [{ type: 'text', text: JSON.stringify({ note_id, user: who?.user, agent: who?.agent }) }],
      };
    });
    mcp.registerTool('delete_note', tools.delete_note, async ({ note_id }) => ({
      content: [{ type: 'text', text: `deleted ${note_id}` }],
    }));
    const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
    res.once('close', () => {
      void transport.close();
      void mcp.close();
    });
    await mcp.connect(transport);
    await transport.handleRequest(req, res, (req as { body?: unknown }).body);
  });
});
mtls.attach(server);
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address() as AddressInfo;
  process.stdout.write(`${JSON.stringify({ mcpUrl: `https://127.0.0.1:${port}/mcp` })}\n`);
});
process.once('SIGTERM', () => {
  server.close();
  server.closeAllConnections();
  void Promise.all([feed.close(), toBroker.close(), source.close()]).then(() => process.exit(0));
});
