// Which tools the guard protects, and how: declarations from the configuration first, then the
// upstream's own hints (tools/list `_meta` "dev.taskpass/resource" / "dev.taskpass/action" and
// `annotations.readOnlyHint`). A tool with neither a declaration nor a usable resource hint is
// left out, so the verifier refuses every call of it (deny by default).
import { compileResourceTemplate, isAction, META_ACTION, META_RESOURCE } from '@taskpass/contract';
import type { ToolPolicy } from '@taskpass/verifier';
import type { GuardConfig } from './config.ts';
import type { UpstreamTool } from './upstream.ts';

/** A tool the guard will not let through, and why (logged at start). */
export interface SkippedTool {
  name: string;
  reason: string;
}

/**
 * The verifier's tool policies from the configured declarations and the upstream's tools.
 *
 * @example
 * ```ts
 * const { tools, skipped } = toolPolicies(config.tools, await upstream.listTools(headers));
 * ```
 */
export function toolPolicies(
  declared: GuardConfig['tools'],
  learned: readonly UpstreamTool[] = [],
): { tools: Record<string, ToolPolicy>; skipped: SkippedTool[] } {
  const tools: Record<string, ToolPolicy> = {};
  const skipped: SkippedTool[] = [];
  for (const [name, d] of Object.entries(declared)) tools[name] = { resource: d.resource, action: d.action };
  for (const t of learned) {
    if (Object.hasOwn(tools, t.name)) continue;
    const resource = t._meta?.[META_RESOURCE];
    const action = t._meta?.[META_ACTION];
    if (typeof resource !== 'string') {
      skipped.push({ name: t.name, reason: `no _meta["${META_RESOURCE}"] hint and no declaration` });
      continue;
    }
    try {
      compileResourceTemplate(resource);
    } catch (e) {
      skipped.push({ name: t.name, reason: `its resource hint is invalid: ${(e as Error).message}` });
      continue;
    }
    if (action !== undefined && !isAction(action)) {
      skipped.push({ name: t.name, reason: `its _meta["${META_ACTION}"] is not read, write or admin` });
      continue;
    }
    // Only what decides enforcement is kept: the resource, the action hint, readOnlyHint.
    const policy: ToolPolicy = { resource };
    if (action !== undefined) policy.action = action;
    else if (t.annotations?.readOnlyHint === true) policy.annotations = { readOnlyHint: true };
    tools[t.name] = policy;
  }
  return { tools, skipped };
}
