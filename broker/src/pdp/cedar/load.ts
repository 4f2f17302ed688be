// Loading a Cedar policy directory: every top-level *.cedar file, an optional entities.json (the
// static entities the policies look up, e.g. tickets and their regions) and an optional schema that
// the policies and entities are validated against. All-or-nothing: any error rejects the whole set,
// and every error names the file, line and column.
import { createHash } from 'node:crypto';
import { readdir, readFile, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { MAX_POLICY_FILE_BYTES } from '../../policy/loader.ts';
import type { CedarWasm } from './wasm.ts';

type DetailedError = { message: string; help: string | null; sourceLocations?: { start: number }[] };
type EntityJson = Parameters<CedarWasm['checkParseEntities']>[0]['entities'][number];
type Schema = Parameters<CedarWasm['checkParseSchema']>[0];

/** The file of static entities in a Cedar policy directory. */
export const ENTITIES_FILE = 'entities.json';
/** Entity types the broker builds from each request; entities.json may not define them. */
export const REQUEST_ENTITY_TYPES = ['Taskpass::Agent', 'Taskpass::Action', 'Taskpass::User'];

/** One problem in a Cedar policy directory (1-based line and column, when known). */
export interface CedarLoadError {
  file: string;
  line?: number;
  column?: number;
  message: string;
}

/** A policy set ready to be preparsed: ids are `@id("...")` annotations or `file:line`. */
export interface CedarPolicySet {
  version: string;
  files: string[];
  policies: Record<string, string>;
  /** Ids of the `forbid` policies (an erroring forbid fails closed). */
  forbids: ReadonlySet<string>;
  entities: EntityJson[];
}

export type CedarLoadResult = ({ ok: true } & CedarPolicySet) | { ok: false; errors: CedarLoadError[] };

/** One error per line: `file:line:column: message`. */
export function formatCedarErrors(errors: readonly CedarLoadError[]): string {
  return errors
    .map((e) => `${e.file}${e.line !== undefined ? `:${e.line}:${e.column ?? 1}` : ''}: ${e.message}`)
    .join('\n');
}

/** Line and column (1-based) of a UTF-8 byte offset (Cedar's source locations) in `text`. */
export function positionAt(text: string, byteOffset: number): { line: number; column: number } {
  const before = Buffer.from(text, 'utf8').subarray(0, byteOffset).toString('utf8');
  const lines = before.split('\n');
  return { line: lines.length, column: (lines.at(-1)?.length ?? 0) + 1 };
}

/** Cedar's errors as ours; `at` turns a byte offset into the file's position. */
function fromCedar(
  errors: readonly DetailedError[],
  file: string,
  at?: (offset: number) => { line: number; column: number },
): CedarLoadError[] {
  return errors.map((e) => {
    const offset = e.sourceLocations?.[0]?.start;
    const message = e.help ? `${e.message} (${e.help})` : e.message;
    return { file, ...(at && offset !== undefined ? at(offset) : {}), message };
  });
}

async function readSmall(path: string): Promise<string> {
  const st = await stat(path);
  if (!st.isFile()) throw new Error('not a file');
  if (st.size > MAX_POLICY_FILE_BYTES) throw new Error(`larger than ${MAX_POLICY_FILE_BYTES} bytes`);
  return readFile(path, 'utf8');
}

interface SourcedPolicy {
  id: string;
  text: string;
  file: string;
  /** Character offset of the policy in its file. */
  offset: number;
  source: string;
  effect: 'permit' | 'forbid';
}

/**
 * Splits one file into its policies, in source order. Cedar returns each policy's exact source
 * text (in no particular order), so each is found back in the file to know where it starts.
 */
function splitFile(
  cedar: CedarWasm,
  file: string,
  source: string,
): { policies: SourcedPolicy[] } | { errors: CedarLoadError[] } {
  const parts = cedar.policySetTextToParts(source);
  if (parts.type === 'failure')
    return { errors: fromCedar(parts.errors, file, (o) => positionAt(source, o)) };
  if (parts.policy_templates.length) {
    return { errors: [{ file, message: 'policy templates are not supported; write static policies' }] };
  }
  const from = new Map<string, number>();
  const out: SourcedPolicy[] = [];
  for (const text of parts.policies) {
    const offset = source.indexOf(text, from.get(text) ?? 0);
    from.set(text, offset + text.length);
    const json = cedar.policyToJson(text);
    if (json.type === 'failure') return { errors: fromCedar(json.errors, file) };
    const { line } = positionAt(source, Buffer.byteLength(source.slice(0, offset)));
    const id = json.json.annotations?.id ?? `${file}:${line}`;
    out.push({ id, text, file, offset, source, effect: json.json.effect });
  }
  return { policies: out.sort((a, b) => a.offset - b.offset) };
}

/** Reads and parses the schema file: `*.json` is Cedar's JSON schema format, anything else text. */
async function loadSchema(
  cedar: CedarWasm,
  path: string,
): Promise<{ ok: true; schema: Schema; text: string } | { ok: false; errors: CedarLoadError[] }> {
  const file = basename(path);
  let text: string;
  let schema: Schema;
  try {
    text = await readSmall(path);
    schema = path.endsWith('.json') ? (JSON.parse(text) as Schema) : text;
  } catch (err) {
    return { ok: false, errors: [{ file, message: `cannot read the schema: ${(err as Error).message}` }] };
  }
  const r = cedar.checkParseSchema(schema);
  if (r.type === 'failure') {
    const at = typeof schema === 'string' ? (o: number) => positionAt(text, o) : undefined;
    return { ok: false, errors: fromCedar(r.errors, file, at) };
  }
  return { ok: true, schema, text };
}

async function loadEntities(
  cedar: CedarWasm,
  dir: string,
  schema: Schema | undefined,
): Promise<{ ok: true; entities: EntityJson[]; text: string } | { ok: false; errors: CedarLoadError[] }> {
  let text: string;
  try {
    text = await readSmall(join(dir, ENTITIES_FILE));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { ok: true, entities: [], text: '' };
    return {
      ok: false,
      errors: [{ file: ENTITIES_FILE, message: `cannot read: ${(err as Error).message}` }],
    };
  }
  let entities: unknown;
  try {
    entities = JSON.parse(text);
  } catch (err) {
    return {
      ok: false,
      errors: [{ file: ENTITIES_FILE, message: `invalid JSON: ${(err as Error).message}` }],
    };
  }
  if (!Array.isArray(entities)) {
    return { ok: false, errors: [{ file: ENTITIES_FILE, message: 'must be a JSON array of entities' }] };
  }
  const errors: CedarLoadError[] = [];
  entities.forEach((e: { uid?: { type?: unknown } }, i) => {
    if (REQUEST_ENTITY_TYPES.includes(String(e?.uid?.type))) {
      errors.push({
        file: ENTITIES_FILE,
        message: `entity [${i}]: ${String(e.uid?.type)} entities come from the request, not from this file`,
      });
    }
  });
  const r = cedar.checkParseEntities({ entities: entities as EntityJson[], schema: schema ?? null });
  if (r.type === 'failure') errors.push(...fromCedar(r.errors, ENTITIES_FILE));
  return errors.length ? { ok: false, errors } : { ok: true, entities: entities as EntityJson[], text };
}

/**
 * Loads every top-level `*.cedar` file of `dir` (plus `entities.json` when present) and validates
 * them against `schemaPath` when given. Never throws.
 */
export async function loadCedarDir(
  cedar: CedarWasm,
  dir: string,
  schemaPath?: string,
): Promise<CedarLoadResult> {
  let names: string[];
  try {
    names = (await readdir(dir)).filter((n) => n.endsWith('.cedar') && !n.startsWith('.')).sort();
  } catch (err) {
    return {
      ok: false,
      errors: [{ file: dir, message: `cannot read the policy directory: ${(err as Error).message}` }],
    };
  }
  const errors: CedarLoadError[] = [];
  const hash = createHash('sha256');
  let schema: Schema | undefined;
  if (schemaPath) {
    const s = await loadSchema(cedar, schemaPath);
    if (s.ok) {
      schema = s.schema;
      hash.update(`schema\0${s.text}\0`);
    } else errors.push(...s.errors);
  }
  const policies: SourcedPolicy[] = [];
  for (const name of names) {
    let source: string;
    try {
      source = await readSmall(join(dir, name));
    } catch (err) {
      errors.push({ file: name, message: `cannot read: ${(err as Error).message}` });
      continue;
    }
    hash.update(`${name}\0${source}\0`);
    const r = splitFile(cedar, name, source);
    if ('errors' in r) errors.push(...r.errors);
    else policies.push(...r.policies);
  }
  if (!names.length)
    errors.push({ file: dir, message: 'no *.cedar policy files: every call would be denied' });
  const where = (p: SourcedPolicy, offsetInPolicy = 0) => ({
    file: p.file,
    ...positionAt(p.source, Buffer.byteLength(p.source.slice(0, p.offset)) + offsetInPolicy),
  });
  const byId = new Map<string, SourcedPolicy>();
  for (const p of policies) {
    const prev = byId.get(p.id);
    if (prev)
      errors.push({
        ...where(p),
        message: `duplicate policy id "${p.id}" (also at ${prev.file}:${where(prev).line})`,
      });
    else byId.set(p.id, p);
  }
  const record = Object.fromEntries(policies.map((p) => [p.id, p.text]));
  if (schema !== undefined && !errors.length) {
    const v = cedar.validate({ schema, policies: { staticPolicies: record } });
    if (v.type === 'failure') errors.push(...fromCedar(v.errors, schemaPath ? basename(schemaPath) : dir));
    else {
      for (const { policyId, error } of v.validationErrors) {
        const p = byId.get(policyId);
        const offset = error.sourceLocations?.[0]?.start ?? 0;
        errors.push({
          ...(p ? where(p, offset) : { file: policyId }),
          message: `${error.message}${error.help ? ` (${error.help})` : ''}`,
        });
      }
    }
  }
  const entities = await loadEntities(cedar, dir, schema);
  if (!entities.ok) errors.push(...entities.errors);
  if (errors.length || !entities.ok) return { ok: false, errors };
  hash.update(`${ENTITIES_FILE}\0${entities.text}`);
  const forbids = new Set(policies.filter((p) => p.effect === 'forbid').map((p) => p.id));
  return {
    ok: true,
    version: hash.digest('hex').slice(0, 32),
    files: names,
    policies: record,
    forbids,
    entities: entities.entities,
  };
}
