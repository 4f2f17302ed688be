// MCP `_meta` keys of Taskpass (docs/design.md §6), in the reverse-DNS prefix form MCP reserves
// for extensions.

/** A tool's published resource template (`tools/list` → `Tool._meta`). */
export const META_RESOURCE = 'dev.taskpass/resource';
/** A tool's published action class (`tools/list` → `Tool._meta`). */
export const META_ACTION = 'dev.taskpass/action';
/** The call token of a `tools/call` over stdio (`params._meta`), where there is no HTTP header. */
export const META_TOKEN = 'dev.taskpass/token';
/** The stable error code of a refused `tools/call` over stdio (`CallToolResult._meta`). */
export const META_ERROR = 'dev.taskpass/error';
