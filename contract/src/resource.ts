// The resource grammar (docs/design.md §5): what the broker accepts in a token request, what the
// policy engine matches, what the verifier derives and compares. One implementation, so the three
// can never disagree on what a resource is.
//
//   resource := segment ("/" segment)*     at most 512 bytes
//   segment  := [A-Za-z0-9._~:@+=-]+       not "." or ".."
//
// Percent-encoding, backslashes, spaces and non-ASCII look-alikes are simply not in the grammar.
// Character tables instead of regular expressions: obviously linear in the input.

/** Longest resource, in bytes (every allowed character is one byte). */
export const MAX_RESOURCE_BYTES = 512;

/** The characters a resource segment may hold. */
export const RESOURCE_SEGMENT_CHARS =
  'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~:@+=-';

const TABLE = new Uint8Array(128);
for (let i = 0; i < RESOURCE_SEGMENT_CHARS.length; i++) TABLE[RESOURCE_SEGMENT_CHARS.charCodeAt(i)] = 1;

/**
 * True when the UTF-16 code unit `c` may appear in a resource segment.
 *
 * @example
 * ```ts
 * isResourceChar('a'.charCodeAt(0)); // true
 * isResourceChar('/'.charCodeAt(0)); // false (a separator, not segment text)
 * ```
 */
export function isResourceChar(c: number): boolean {
  return c < 128 && TABLE[c] === 1;
}

/** The outcome of {@link checkResource}: valid, or why not. */
export type ResourceCheck = { ok: true } | { ok: false; reason: string };

/**
 * Checks a resource against the grammar and says why it is not valid.
 *
 * @example
 * ```ts
 * checkResource('tickets/T-42');     // { ok: true }
 * checkResource('tickets/../admin'); // { ok: false, reason: 'the resource has a "." or ".." segment' }
 * ```
 */
export function checkResource(s: string): ResourceCheck {
  const bad = (reason: string): ResourceCheck => ({ ok: false, reason });
  if (typeof s !== 'string' || s.length === 0) return bad('the resource is empty');
  if (s.length > MAX_RESOURCE_BYTES) return bad(`the resource is longer than ${MAX_RESOURCE_BYTES} bytes`);
  let start = 0;
  for (let i = 0; i <= s.length; i++) {
    if (i === s.length || s.charCodeAt(i) === 0x2f) {
      const len = i - start;
      if (len === 0) return bad('the resource has an empty segment (leading, trailing or double "/")');
      if (
        (len === 1 && s.charCodeAt(start) === 0x2e) ||
        (len === 2 && s.charCodeAt(start) === 0x2e && s.charCodeAt(start + 1) === 0x2e)
      ) {
        return bad('the resource has a "." or ".." segment');
      }
      start = i + 1;
      continue;
    }
    if (!isResourceChar(s.charCodeAt(i))) {
      return bad(
        'the resource contains a character outside [A-Za-z0-9._~:@+=-] (no percent-encoding, spaces or non-ASCII)',
      );
    }
  }
  return { ok: true };
}

/**
 * True when `s` is a valid resource: grammar, length, no `.`/`..` segments.
 *
 * @example
 * ```ts
 * isValidResource('tickets/T-42');     // true
 * isValidResource('tickets/../admin'); // false
 * isValidResource('tickets/*');        // false
 * ```
 */
export function isValidResource(s: string): boolean {
  return checkResource(s).ok;
}

/**
 * True when `s` is exactly one valid resource segment (so a value put into a segment can never
 * add a `/`, a wildcard or a `..`).
 *
 * @example
 * ```ts
 * isResourceSegment('T-42'); // true
 * isResourceSegment('a/b');  // false
 * isResourceSegment('..');   // false
 * ```
 */
export function isResourceSegment(s: string): boolean {
  if (typeof s !== 'string' || s.length === 0 || s.length > MAX_RESOURCE_BYTES) return false;
  if (s === '.' || s === '..') return false;
  for (let i = 0; i < s.length; i++) if (!isResourceChar(s.charCodeAt(i))) return false;
  return true;
}
