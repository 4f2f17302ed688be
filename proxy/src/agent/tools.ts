// Tool names as the host sees them: each upstream's tools under that upstream's prefix
// (`tickets.get_ticket`), so several MCP servers fit behind one proxy without ambiguity.
import { ProxyError } from './errors.ts';

/** Where an exposed tool name leads. */
export interface ToolRoute {
  /** The upstream's configured name. */
  upstream: string;
  /** The tool's name at that upstream (what the token and the server know it as). */
  tool: string;
}

/** One upstream's tools/list, for {@link exposeTools}. */
export interface UpstreamTools<T extends { name: string }> {
  upstream: string;
  prefix: string;
  tools: readonly T[];
}

/**
 * Renames every upstream's tools with its prefix and returns them with the routes back. Two
 * upstreams exposing the same name is a configuration error (TASKPASS_PROXY_CONFIG_INVALID): the
 * host could not tell which server it calls, and the proxy will not guess.
 *
 * @example
 * ```ts
 * const { tools, routes } = exposeTools([{ upstream: 'tickets', prefix: 'tickets.', tools: listed.tools }]);
 * routes.get('tickets.get_ticket'); // { upstream: 'tickets', tool: 'get_ticket' }
 * ```
 */
export function exposeTools<T extends { name: string }>(
  lists: readonly UpstreamTools<T>[],
): { tools: T[]; routes: Map<string, ToolRoute> } {
  const tools: T[] = [];
  const routes = new Map<string, ToolRoute>();
  for (const l of lists) {
    for (const t of l.tools) {
      const exposed = `${l.prefix}${t.name}`;
      const taken = routes.get(exposed);
      if (taken) {
        throw new ProxyError(
          'TASKPASS_PROXY_CONFIG_INVALID',
          `tool name collision: "${exposed}" is "${taken.tool}" of upstreams.${taken.upstream} and "${t.name}" of upstreams.${l.upstream}; give them distinct prefixes`,
        );
      }
      routes.set(exposed, { upstream: l.upstream, tool: t.name });
      tools.push({ ...t, name: exposed });
    }
  }
  return { tools, routes };
}
