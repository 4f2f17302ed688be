// The Cedar decision point: policies evaluated in the broker by @cedar-policy/cedar-wasm, loaded
// from a directory of *.cedar files (plus entities.json and an optional schema), validated and
// hot-reloaded all-or-nothing like the scope templates: a bad reload keeps the last good set.
// docs/policy-engines.md ("Cedar") describes the request mapping.
import { BrokerError } from '../errors.ts';
import { type CedarLoadError, type CedarPolicySet, formatCedarErrors, loadCedarDir } from './cedar/load.ts';
import { toCedarRequest } from './cedar/request.ts';
import { watchPaths } from './cedar/watch.ts';
import { type CedarWasm, cedarWasm } from './cedar/wasm.ts';
import type { DecisionPoint, PdpDecision, PdpInput } from './types.ts';

export { formatCedarErrors } from './cedar/load.ts';

/** Outcome of one (re)load. */
export type CedarReloadReport =
  | { ok: true; version: string; files: string[] }
  | { ok: false; errors: CedarLoadError[] };

export interface CedarConfig {
  name: string;
  /** Directory of *.cedar files (and an optional entities.json). */
  policies: string;
  /** A `.cedarschema` file, or Cedar's JSON schema format (`*.json`). */
  schema?: string | undefined;
  /** Reload on change (default true); {@link CedarDecisionPoint.reload} works either way. */
  watch?: boolean;
  /** Quiet time after the last file event before reloading (default 250 ms). */
  debounceMs?: number;
  onReload?: (r: CedarReloadReport) => void;
}

export interface CedarDecisionPoint extends DecisionPoint {
  readonly kind: 'cedar';
  /** Reloads now (e.g. on SIGHUP); a bad set is reported and the last good one stays in force. */
  reload(): Promise<CedarReloadReport>;
}

let instances = 0;

/**
 * Loads the policies and returns the decision point. Rejects with TASKPASS_POLICY_INVALID (every
 * error with file, line and column, also in `details.errors`) when the first load fails.
 */
export async function createCedarDecisionPoint(cfg: CedarConfig): Promise<CedarDecisionPoint> {
  const cedar = cedarWasm();
  // One preparsed policy set per decision point, replaced in place on reload: Cedar's preparse is
  // side-effect free on error, and evaluation is synchronous, so a decision never sees half a set.
  const psetId = `taskpass-cedar-${++instances}-${cfg.name}`;
  let current: CedarPolicySet | undefined;
  let chain: Promise<unknown> = Promise.resolve();
  let stop: (() => void) | undefined;

  const load = async (): Promise<CedarReloadReport> => {
    const r = await loadCedarDir(cedar, cfg.policies, cfg.schema);
    let report: CedarReloadReport;
    if (!r.ok) report = { ok: false, errors: r.errors };
    else {
      const pre = cedar.preparsePolicySet(psetId, { staticPolicies: r.policies });
      if (pre.type === 'failure') {
        report = { ok: false, errors: pre.errors.map((e) => ({ file: cfg.policies, message: e.message })) };
      } else {
        current = r;
        report = { ok: true, version: r.version, files: r.files };
      }
    }
    cfg.onReload?.(report);
    return report;
  };
  const reload = (): Promise<CedarReloadReport> => {
    const run = chain.then(load);
    chain = run.catch(() => undefined);
    return run;
  };

  const first = await reload();
  if (!first.ok) {
    throw new BrokerError(
      'TASKPASS_POLICY_INVALID',
      `invalid Cedar policies for decision point "${cfg.name}" in ${cfg.policies}:\n${formatCedarErrors(first.errors)}`,
      { errors: first.errors },
    );
  }
  if (cfg.watch ?? true) {
    const paths = cfg.schema ? [cfg.policies, cfg.schema] : [cfg.policies];
    stop = watchPaths(
      paths,
      cfg.debounceMs ?? 250,
      () => void reload(),
      (err) =>
        cfg.onReload?.({
          ok: false,
          errors: [{ file: cfg.policies, message: `watch failed: ${err.message}` }],
        }),
    );
  }

  return {
    name: cfg.name,
    kind: 'cedar',
    version: () => current?.version ?? '',
    reload,
    async decide(input: PdpInput): Promise<PdpDecision> {
      return decide(cedar, cfg.name, psetId, current, input);
    },
    // cedar-wasm has no call to drop a preparsed set: a closed decision point's last set stays in
    // the module's memory (one per decision point created, not per reload).
    async close() {
      stop?.();
      stop = undefined;
      await chain;
    },
  };
}

/** One evaluation; never throws (anything unexpected is TASKPASS_PDP_UNAVAILABLE). */
function decide(
  cedar: CedarWasm,
  name: string,
  psetId: string,
  set: CedarPolicySet | undefined,
  input: PdpInput,
): PdpDecision {
  const unavailable = (why: string): PdpDecision => ({
    allow: false,
    code: 'TASKPASS_PDP_UNAVAILABLE',
    reason: `cedar ${name}: ${why}`,
    engine: name,
  });
  if (!set) return unavailable('no policies loaded');
  let answer: ReturnType<CedarWasm['statefulIsAuthorized']>;
  try {
    answer = cedar.statefulIsAuthorized({
      ...toCedarRequest(input, set.entities),
      preparsedPolicySetId: psetId,
    });
  } catch (err) {
    return unavailable((err as Error).message);
  }
  if (answer.type === 'failure') return unavailable(answer.errors.map((e) => e.message).join('; '));
  const { decision, diagnostics } = answer.response;
  const errored = diagnostics.errors.map((e) => `policy ${e.policyId} errored: ${e.error.message}`);
  // Cedar skips a policy whose evaluation errors; a skipped forbid might have denied, so fail closed.
  const brokenForbids = diagnostics.errors.filter((e) => set.forbids.has(e.policyId)).map((e) => e.policyId);
  if (decision === 'allow' && !brokenForbids.length) {
    return { allow: true, engine: name, policy: diagnostics.reason.join(', ') };
  }
  const deny = (reason: string, policies: string[]): PdpDecision => ({
    allow: false,
    code: 'TASKPASS_PDP_DENIED',
    reason: `cedar ${name}: ${reason}${errored.length ? ` (${errored.join('; ')})` : ''}`,
    engine: name,
    ...(policies.length ? { policy: policies.join(', ') } : {}),
  });
  if (decision === 'allow')
    return deny(`forbid policy ${brokenForbids.join(', ')} errored; failing closed`, brokenForbids);
  if (diagnostics.reason.length)
    return deny(`denied by policy ${diagnostics.reason.join(', ')}`, diagnostics.reason);
  return deny('no policy permits', []);
}
