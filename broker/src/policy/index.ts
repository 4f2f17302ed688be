// The policy engine: scope templates (schema), the safe pattern language, decisions, loading and
// reloading a policy directory, and fixtures.
export {
  type Admission,
  type Allow,
  type DecideInput,
  type Decision,
  type Deny,
  historyOf,
  PolicySet,
  type PolicyUser,
  templateIds,
} from './engine.ts';
export {
  type FixtureCase,
  type FixtureCaseResult,
  type FixtureFailure,
  type FixtureRun,
  parseFixtureText,
  runCase,
  runFixtures,
} from './fixtures.ts';
export {
  formatPath,
  formatPolicyErrors,
  formatPolicyWarnings,
  type LoadResult,
  loadPolicyDir,
  MAX_POLICY_FILE_BYTES,
  type PolicyError,
  type PolicyLogger,
  PolicyWatcher,
  type PolicyWatcherOptions,
  parsePolicyText,
  type ReloadReport,
} from './loader.ts';
export {
  findWidenings,
  type Locate,
  type PolicyWarning,
  type SourceLocation,
  type Widened,
  where,
} from './overlap.ts';
export {
  type CompiledPattern,
  compilePattern,
  type PatternContext,
  type ParsedSpiffeId,
  parseSpiffeId,
  patternsOverlap,
  validateResource,
} from './pattern.ts';
export {
  type ClaimCondition,
  MAX_TASK_TTL_SEC,
  MAX_TOKEN_TTL_SEC,
  parseDuration,
  parseTemplateFile,
  type Template,
  TemplateFileSchema,
  type TemplateInput,
  TemplateSchema,
  type TemplateTool,
  type ToolRequirement,
} from './schema.ts';
