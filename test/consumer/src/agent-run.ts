// What both consumer agents do, from the installed packages alone: open a task at the broker with
// the agent's SPIFFE identity (mTLS), call the MCP server at MCP_URL through the broker's per-call
// tokens — one call the task's template allows, one it does not — and send one request without any
// token. Prints one JSON line with what happened. Each agent file supplies its MCP client SDK.
//
// Environment: SPIFFE_ENDPOINT_SOCKET, BROKER_URL, BROKER_ID, SERVER_ID, AUDIENCE, MCP_URL, HINT.
import { BrokerClient, TaskpassDeniedError, taskpassFetch } from '@taskpass/agent-plugin';
import { createMtlsAgent, matchId } from '@taskpass/spiffe';
import { pickByHint, X509Source } from '@taskpass/spiffe/workload';
import { fetch as undiciFetch } from 'undici';

const env = (name: string): string => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};

/** The two things an agent needs of its MCP client, whichever SDK generation provides it. */
export interface McpClient {
  listTools(): Promise<unknown>;
  callTool(params: { name: string; arguments: Record<string, unknown> }): Promise<object>;
  close(): Promise<void>;
}

type Fetch = (url: string | URL, init?: RequestInit) => Promise<Response>;

/** Runs the agent with `connect`, which builds and connects an MCP client over `fetch`. */
export async function runAgent(connect: (mcpUrl: URL, fetch: Fetch) => Promise<McpClient>): Promise<void> {
  const audience = env('AUDIENCE');
  const mcpUrl = env('MCP_URL');
  const source = await X509Source.create({ picker: pickByHint(env('HINT')) });
  // The MCP server is authenticated by its SPIFFE ID; the agent presents its own SVID.
  const toServer = createMtlsAgent(source, matchId(env('SERVER_ID')));
  const mtlsFetch: Fetch = (url, init) =>
    undiciFetch(url, { ...(init as object), dispatcher: toServer }) as unknown as Promise<Response>;

  const result: Record<string, unknown> = { agent: source.getX509Svid().id.toString() };
  {
    await using broker = new BrokerClient({
      url: env('BROKER_URL'),
      auth: { kind: 'mtls', source, brokerId: env('BROKER_ID') },
    });
    await using task = await broker.openTask({ purpose: 'read note n-1' });
    result.task = task.id;
    const mcp = await connect(new URL(mcpUrl), taskpassFetch(task, { audience, fetch: mtlsFetch }));
    // The server's tools/list hints (resource template, action class) tell the plugin what to ask for.
    await mcp.listTools();
    const read = (await mcp.callTool({ name: 'read_note', arguments: { note_id: 'n-1' } })) as {
      isError?: boolean;
      content: unknown;
    };
    result.allowed = { isError: read.isError === true, content: read.content };
    try {
      await mcp.callTool({ name: 'delete_note', arguments: { note_id: 'n-1' } });
      result.denied = { notDenied: true };
    } catch (e) {
      result.denied =
        e instanceof TaskpassDeniedError ? { code: e.code, status: e.status } : { other: String(e) };
    }
    await mcp.close();
    await task.complete();
  }
  // The server itself refuses a call that carries no token.
  const bare = await mtlsFetch(mcpUrl, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
    body: JSON.stringify({
      jsonrpc: '2.0',
      id: 1,
      method: 'tools/call',
      params: { name: 'read_note', arguments: { note_id: 'n-1' } },
    }),
  });
  result.noToken = { status: bare.status, challenge: bare.headers.get('www-authenticate')?.split(' ')[0] };
  await toServer.close();
  await source.close();
  process.stdout.write(`${JSON.stringify(result)}\n`);
}
