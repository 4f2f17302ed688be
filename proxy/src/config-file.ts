// What both halves of the package share about configuration: fields checked by a parser the rest of
// Taskpass already has (SPIFFE IDs, trust domains, resource templates), the one-line rendering of
// zod's issues with their paths, and reading a YAML or JSON file.
import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';

/** A string field that `parse` accepts (it throws on anything else). */
export function parsedBy(parse: (v: string) => unknown, message: string) {
  return z.string().refine(
    (v) => {
      try {
        parse(v);
        return true;
      } catch {
        return false;
      }
    },
    { message },
  );
}

/** The issues of a failed parse, one `path: message` each, joined: what a person reads at start. */
export function issuesOf(error: z.ZodError): string {
  return error.issues.map((i) => `${i.path.map(String).join('.') || '(root)'}: ${i.message}`).join('; ');
}

/**
 * Reads a YAML or JSON (`.json`) configuration file and returns its top-level mapping; `fail` makes
 * the package's own error from a message naming the file.
 */
export function readConfigFile(file: string, fail: (message: string) => Error): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw fail(`cannot read configuration file ${file}: ${(e as Error).message}`);
  }
  let raw: unknown;
  try {
    raw = file.endsWith('.json') ? JSON.parse(text) : parseYaml(text);
  } catch (e) {
    throw fail(`cannot parse ${file}: ${(e as Error).message}`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw fail(`${file} must contain a mapping at the top level`);
  }
  return raw as Record<string, unknown>;
}
