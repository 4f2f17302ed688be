// MCP `_meta` key names (spec basic/index, "_meta"): a prefix is reverse DNS ending in "/", and a
// prefix whose second label is "modelcontextprotocol" or "mcp" is reserved for MCP itself. Ours is
// "dev.taskpass/" (taskpass.dev); this keeps every key Taskpass reads or writes inside it.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as agent from '@taskpass/agent-plugin';
import * as verifier from '@taskpass/verifier';

const RESERVED_SECOND_LABEL = /^[^.]+\.(modelcontextprotocol|mcp)(\.|$)/;

test('every _meta key Taskpass uses has our reverse-DNS prefix, never a reserved one', () => {
  const keys = [
    verifier.META_TOKEN,
    verifier.META_RESOURCE,
    verifier.META_ACTION,
    agent.META_TOKEN,
    agent.META_RESOURCE,
    agent.META_ACTION,
  ];
  for (const key of keys) {
    const slash = key.indexOf('/');
    assert.ok(slash > 0, key);
    const prefix = key.slice(0, slash);
    assert.match(prefix, /^[a-z][a-z0-9-]*(\.[a-z][a-z0-9-]*)+$/, `${key}: reverse DNS labels`);
    assert.doesNotMatch(prefix, RESERVED_SECOND_LABEL, `${key}: reserved prefix`);
    assert.equal(prefix, 'dev.taskpass', key);
  }
});
