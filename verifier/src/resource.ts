// Kept so that `@taskpass/verifier/resource` still resolves for code written against it; the
// resource grammar, the template compiler and args_sha256 live in @taskpass/contract, which agents
// and MCP servers share. Its errors are ContractError (code TASKPASS_CONTRACT_*); the verifier
// itself answers a call with TASKPASS_VERIFY_RESOURCE_UNDERIVABLE.
export {
  argsSha256,
  checkedDeriver,
  compileResourceTemplate,
  isValidResource,
  type ResourceDeriver,
  type ToolArgs,
} from '@taskpass/contract';
