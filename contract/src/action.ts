// Action classes of a tool call (docs/design.md §2): what a call may do, least powerful first.

/** The action classes, from least to most powerful. */
export const ACTIONS = ['read', 'write', 'admin'] as const;

/** One action class: `read`, `write` or `admin`. */
export type Action = (typeof ACTIONS)[number];

/**
 * True when `v` is an action class.
 *
 * @example
 * ```ts
 * isAction('write'); // true
 * isAction('delete'); // false
 * ```
 */
export function isAction(v: unknown): v is Action {
  return typeof v === 'string' && (ACTIONS as readonly string[]).includes(v);
}
