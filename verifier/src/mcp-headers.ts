// The MCP standard headers' mapping and value encoding live in @taskpass/contract (the agent
// plugin sends them, the verifier checks them); this subpath stays for existing importers.
export { decodeMcpHeaderValue, encodeMcpHeaderValue, MCP_NAME_SOURCE, mcpNameOf } from '@taskpass/contract';
