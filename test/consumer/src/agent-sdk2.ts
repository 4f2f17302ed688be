// An agent on the MCP SDK 2.x client (@modelcontextprotocol/client) with @taskpass/agent-plugin.
// Version negotiation `auto`: the 2026-07-28 protocol (no initialize, no session) with servers that
// speak it, the 2025 protocol with the others. Run by test/packages.e2e.test.ts with plain `node`;
// see agent-run.ts for what it does.
import { Client, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';
import { runAgent } from './agent-run.js';

await runAgent(async (url, fetch) => {
  const client = new Client(
    { name: 'notes-agent', version: '2.0.0' },
    { versionNegotiation: { mode: 'auto' } },
  );
  await client.connect(new StreamableHTTPClientTransport(url, { fetch }));
  return client;
});
