// Loading a policy directory (every top-level *.yaml / *.yml file) into a PolicySet, with errors
// that name the file, the JSON path and the reason; and a watcher that reloads on change or on
// demand and keeps the last good set in force when a reload is bad.
import { EventEmitter } from 'node:events';
import { type FSWatcher, watch } from 'node:fs';
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { isMap, isScalar, isSeq, LineCounter, type Node, parseDocument } from 'yaml';
import { BrokerError } from '../errors.ts';
import { PolicySet } from './engine.ts';
import { type PolicyWarning, type SourceLocation, where } from './overlap.ts';
import { parseTemplateFile, type Template } from './schema.ts';

/** Largest template file we read; policy files are small, anything bigger is a mistake. */
export const MAX_POLICY_FILE_BYTES = 1024 * 1024;

/** One problem in a policy directory. */
export interface PolicyError {
  /** File name relative to the directory (the directory itself for directory-level errors). */
  file: string;
  /** JSON path inside the file, e.g. `tools[1].resources[0]`; empty for file-level errors. */
  path: string;
  message: string;
  /** 1-based position in the file, when known. */
  line?: number;
  col?: number;
}

/** Result of {@link loadPolicyDir}. */
export type LoadResult =
  | { ok: true; set: PolicySet; files: string[] }
  | { ok: false; errors: PolicyError[]; files: string[] };

/** Formats a zod-style path as `templates[0].tools[1].resources[0]`. */
export function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const p of path) {
    if (typeof p === 'number') out += `[${p}]`;
    else out += out ? `.${String(p)}` : String(p);
  }
  return out;
}

/** One error per line: `file:line:col path: message`. */
export function formatPolicyErrors(errors: readonly PolicyError[]): string {
  return errors
    .map((e) => {
      const pos = e.line !== undefined ? `:${e.line}:${e.col ?? 1}` : '';
      return `${e.file}${pos}${e.path ? ` ${e.path}` : ''}: ${e.message}`;
    })
    .join('\n');
}

/** One warning per line: `file:line:col path: warning: message`. */
export function formatPolicyWarnings(warnings: readonly PolicyWarning[]): string {
  return warnings.map((w) => `${w.at ? `${where(w.at)}: ` : ''}warning: ${w.message}`).join('\n');
}

/**
 * Parses one template file's text. `file` is only used in error entries.
 */
export function parsePolicyText(
  text: string,
  file: string,
):
  | {
      ok: true;
      templates: Template[];
      list: boolean;
      /** Line and column of a JSON path in this file (the deepest node that exists on it). */
      locate: (path: readonly PropertyKey[]) => { line: number; col: number } | Record<string, never>;
    }
  | { ok: false; errors: PolicyError[] } {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true });
  if (doc.errors.length) {
    return {
      ok: false,
      errors: doc.errors.map((e) => {
        const pos = e.linePos?.[0] ?? lineCounter.linePos(e.pos[0]);
        return {
          file,
          path: '',
          message: `YAML syntax error${pos ? ` at line ${pos.line}, column ${pos.col}` : ''}: ${e.message.split('\n')[0]}`,
          ...(pos ? { line: pos.line, col: pos.col } : {}),
        };
      }),
    };
  }
  if (doc.contents === null) return { ok: false, errors: [{ file, path: '', message: 'the file is empty' }] };
  let data: unknown;
  try {
    // maxAliasCount guards against alias bombs ("billion laughs").
    data = doc.toJS({ maxAliasCount: 50 });
  } catch (err) {
    return {
      ok: false,
      errors: [{ file, path: '', message: `cannot decode YAML: ${(err as Error).message}` }],
    };
  }
  const r = parseTemplateFile(data);
  if (r.ok) return { ...r, locate: (path) => positionOf(doc.contents as Node | null, path, lineCounter) };
  return {
    ok: false,
    errors: r.issues.map((i) => {
      const pos = positionOf(doc.contents as Node | null, i.path, lineCounter);
      return { file, path: formatPath(i.path), message: i.message, ...pos };
    }),
  };
}

/** Line/column of the deepest existing node on `path` (a missing key points at its parent). */
function positionOf(
  root: Node | null,
  path: readonly PropertyKey[],
  lc: LineCounter,
): { line: number; col: number } | Record<string, never> {
  let node: unknown = root;
  for (const key of path) {
    let next: unknown;
    if (isMap(node)) next = node.get(key as string, true);
    else if (isSeq(node) && typeof key === 'number') next = node.get(key, true);
    if (next === undefined || (!isMap(next) && !isSeq(next) && !isScalar(next))) break;
    node = next;
  }
  const range = (node as { range?: [number, number, number] } | null)?.range;
  return range ? lc.linePos(range[0]) : {};
}

/**
 * Loads every top-level `*.yaml` / `*.yml` file of `dir` (sub-directories such as `fixtures/` and
 * dot-files are ignored). Duplicate template ids across files, and `requires` naming a tool that no
 * template allows on the same audience, are errors. Never throws.
 */
export async function loadPolicyDir(
  dir: string,
  opts: { decisionPoints?: readonly string[] | undefined } = {},
): Promise<LoadResult> {
  let names: string[];
  try {
    names = (await readdir(dir)).filter((n) => !n.startsWith('.') && /\.ya?ml$/.test(n)).sort();
  } catch (err) {
    return {
      ok: false,
      files: [],
      errors: [
        { file: dir, path: '', message: `cannot read the policy directory: ${(err as Error).message}` },
      ],
    };
  }
  const errors: PolicyError[] = [];
  const files: string[] = [];
  const all: {
    file: string;
    prefix: string;
    template: Template;
    at: (path: readonly (string | number)[]) => SourceLocation;
  }[] = [];
  for (const name of names) {
    const full = join(dir, name);
    let text: string;
    try {
      const st = await stat(full);
      if (!st.isFile()) continue;
      if (st.size > MAX_POLICY_FILE_BYTES) {
        errors.push({ file: name, path: '', message: `larger than ${MAX_POLICY_FILE_BYTES} bytes` });
        continue;
      }
      text = await readFile(full, 'utf8');
    } catch (err) {
      errors.push({ file: name, path: '', message: `cannot read: ${(err as Error).message}` });
      continue;
    }
    files.push(name);
    const r = parsePolicyText(text, name);
    if (!r.ok) {
      errors.push(...r.errors);
      continue;
    }
    r.templates.forEach((template, i) => {
      const root = r.list ? ['templates', i] : [];
      all.push({
        file: name,
        prefix: r.list ? `templates[${i}].` : '',
        template,
        at: (path) => ({ file: name, path: formatPath([...root, ...path]), ...r.locate([...root, ...path]) }),
      });
    });
  }
  const firstFile = new Map<string, string>();
  for (const { file, prefix, template } of all) {
    const prev = firstFile.get(template.id);
    if (prev !== undefined) {
      errors.push({
        file,
        path: `${prefix}id`,
        message: `duplicate template id "${template.id}" (also in ${prev})`,
      });
    } else firstFile.set(template.id, file);
  }
  // A prerequisite no template can ever satisfy is almost certainly a typo; say so at load time.
  for (const { file, prefix, template } of all) {
    for (const [i, tool] of template.tools.entries()) {
      for (const [j, req] of tool.requires.entries()) {
        const satisfiable = all.some(
          (o) =>
            o.template.audience === template.audience && o.template.tools.some((t) => t.tool === req.tool),
        );
        if (!satisfiable) {
          errors.push({
            file,
            path: `${prefix}tools[${i}].requires[${j}].tool`,
            message: `no template allows "${req.tool}" on ${template.audience}, so this requirement can never be met`,
          });
        }
      }
    }
  }
  // A decision point the configuration does not define could never be asked: refuse the set.
  if (opts.decisionPoints) {
    const known = new Set(opts.decisionPoints);
    for (const { template, at } of all) {
      if (template.decisionPoint !== undefined && !known.has(template.decisionPoint)) {
        errors.push({
          ...at(['decision_point']),
          message: `no decision point is named "${template.decisionPoint}" in the broker configuration (decisionPoints: ${[...known].join(', ') || 'none'})`,
        });
      }
    }
  }
  if (errors.length) return { ok: false, errors, files };
  const byId = new Map(all.map((a) => [a.template.id, a]));
  const set = PolicySet.from(
    all.map((a) => a.template),
    { locate: (id, path) => byId.get(id)?.at(path) },
  );
  return { ok: true, set, files };
}

/** Minimal logger (pino-compatible). */
export interface PolicyLogger {
  info(obj: object, msg?: string): void;
  warn?(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

/** Options of {@link PolicyWatcher}. */
export interface PolicyWatcherOptions {
  logger?: PolicyLogger;
  /** Quiet time after the last file event before reloading (default 250 ms). */
  debounceMs?: number;
  /** Watch the directory (default true); reload() works either way. */
  watch?: boolean;
  /** Called after every reload attempt (also emitted as 'reloaded' / 'rejected'). */
  onReload?: (r: ReloadReport) => void;
  /** The configured decision point names; a template naming another is an error. */
  decisionPoints?: readonly string[];
}

/** Outcome of one reload attempt. */
export type ReloadReport =
  | { ok: true; files: string[]; templates: number; warnings: readonly PolicyWarning[] }
  | { ok: false; errors: PolicyError[]; files: string[] };

/**
 * Holds the policy set in force and reloads it when the directory changes (debounced) or when
 * {@link PolicyWatcher.reload} is called (e.g. on SIGHUP). A bad reload keeps the last good set,
 * logs every error and emits `'rejected'` with them; a good one swaps atomically and emits
 * `'reloaded'`. Until {@link PolicyWatcher.start} succeeds the set in force denies everything.
 *
 * Events: `'reloaded'` (report: ok), `'rejected'` (report: errors).
 */
export class PolicyWatcher extends EventEmitter {
  readonly dir: string;
  private set: PolicySet = PolicySet.empty();
  private watcher: FSWatcher | undefined;
  private timer: NodeJS.Timeout | undefined;
  private chain: Promise<unknown> = Promise.resolve();
  private closed = false;
  private readonly opts: PolicyWatcherOptions;

  constructor(dir: string, opts: PolicyWatcherOptions = {}) {
    super();
    this.dir = dir;
    this.opts = opts;
  }

  /**
   * First load, then watching. Rejects with TASKPASS_POLICY_INVALID (details.errors) when the
   * directory is invalid: a broker must not start with policies it cannot read.
   */
  async start(): Promise<void> {
    await this.reload();
    if ((this.opts.watch ?? true) && !this.watcher && !this.closed) {
      // Any event counts (not just *.yaml): Kubernetes ConfigMaps swap a "..data" symlink.
      this.watcher = watch(this.dir, { persistent: false }, () => this.schedule());
      this.watcher.on('error', (err) => {
        this.opts.logger?.error({ err, dir: this.dir }, 'policy directory watch failed; reload with SIGHUP');
      });
    }
  }

  /** The set in force (the last good one). */
  current(): PolicySet {
    return this.set;
  }

  /**
   * Reloads now. Resolves with the report when the new set is in force; rejects with a
   * BrokerError TASKPASS_POLICY_INVALID (details: { errors }) when the directory is bad, in which
   * case the previous set stays in force. Reloads never overlap.
   */
  reload(): Promise<ReloadReport> {
    const run = this.chain.then(() => this.doReload());
    this.chain = run.catch(() => undefined);
    return run.then((r) => {
      if (!r.ok) {
        throw new BrokerError(
          'TASKPASS_POLICY_INVALID',
          `invalid policies in ${this.dir}:\n${formatPolicyErrors(r.errors)}`,
          {
            errors: r.errors,
          },
        );
      }
      return r;
    });
  }

  /** Stops watching. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.watcher?.close();
    this.watcher = undefined;
    await this.chain;
  }

  private schedule(): void {
    if (this.closed) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      // Errors are already logged and emitted by doReload.
      this.reload().catch(() => undefined);
    }, this.opts.debounceMs ?? 250);
    this.timer.unref?.();
  }

  private async doReload(): Promise<ReloadReport> {
    const r = await loadPolicyDir(this.dir, { decisionPoints: this.opts.decisionPoints });
    let report: ReloadReport;
    if (r.ok) {
      this.set = r.set;
      report = { ok: true, files: r.files, templates: r.set.templates.length, warnings: r.set.warnings };
      this.opts.logger?.info(
        { dir: this.dir, files: r.files, templates: r.set.templates.map((t) => t.id) },
        'policies loaded',
      );
      if (r.set.warnings.length) {
        const log = this.opts.logger?.warn ?? this.opts.logger?.info;
        log?.call(
          this.opts.logger,
          { dir: this.dir, warnings: r.set.warnings },
          `policies loaded with ${r.set.warnings.length} overlap warning(s):\n${formatPolicyWarnings(r.set.warnings)}`,
        );
      }
      this.emit('reloaded', report);
    } else {
      report = { ok: false, errors: r.errors, files: r.files };
      this.opts.logger?.error(
        { dir: this.dir, errors: r.errors, inForce: this.set.templates.map((t) => t.id) },
        `policy reload rejected; keeping the last good policies:\n${formatPolicyErrors(r.errors)}`,
      );
      this.emit('rejected', report);
    }
    this.opts.onReload?.(report);
    return report;
  }
}
