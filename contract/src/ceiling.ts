// The ceiling of a task (docs/design.md §3, `POST /v1/tasks` answer): every grant the templates
// allow this agent for this user when the task opens. Nothing later can exceed it.
import type { Action } from './action.ts';

/** One entry of a task's ceiling: what one template allows on one MCP server. */
export interface CeilingEntry {
  template: string;
  /** The MCP server's resource URI. */
  audience: string;
  /** Resource patterns in the templates' pattern language (`*`, `prefix*`, `**`, placeholders). */
  tools: CeilingTool[];
}

/** One tool rule of a ceiling entry. */
export interface CeilingTool {
  tool: string;
  action: Action;
  resources: string[];
  /** The token must be bound to the call's arguments: send `args_sha256` with the token request. */
  bind_arguments?: true;
  /** Send the arguments themselves too (a rule whose approval `when:` reads them). */
  send_arguments?: true;
  /** Some or all calls need a person's approval (docs/approvals.md). */
  approval?: true;
}
