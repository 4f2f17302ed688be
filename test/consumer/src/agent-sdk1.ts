// An agent on the MCP SDK 1.x client (@modelcontextprotocol/sdk) with @taskpass/agent-plugin.
// Run by test/packages.e2e.test.ts with plain `node`; see agent-run.ts for what it does.
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { runAgent } from './agent-run.js';

await runAgent(async (url, fetch) => {
  const client = new Client({ name: 'notes-agent', version: '1.0.0' });
  await client.connect(new StreamableHTTPClientTransport(url, { fetch }));
  return client;
});
