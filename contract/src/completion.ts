// How an agent ends its task: the body of `POST /v1/tasks/:id/complete` (docs/design.md §3).

/** The outcomes an agent may report when it completes its task. */
export const COMPLETION_STATUSES = ['completed', 'failed', 'cancelled'] as const;

/** One outcome of `complete`: `completed`, `failed` or `cancelled`. */
export type CompletionStatus = (typeof COMPLETION_STATUSES)[number];
