// The contract's own small error. Broker, verifier and agent plugin never let it reach their
// callers: each maps it to its own stable code (TASKPASS_INVALID_RESOURCE,
// TASKPASS_VERIFY_RESOURCE_UNDERIVABLE, TASKPASS_AGENT_RESOURCE_UNDERIVABLE, ...).

/** Every code a {@link ContractError} carries. */
export const CONTRACT_ERRORS = {
  TASKPASS_CONTRACT_TEMPLATE_INVALID: 'A resource template is not a valid resource pattern.',
  TASKPASS_CONTRACT_RESOURCE_UNDERIVABLE: 'No valid resource can be derived from the call arguments.',
} as const;

export type ContractErrorCode = keyof typeof CONTRACT_ERRORS;

/**
 * Thrown by the resource template compiler and the derivers it returns.
 *
 * @example
 * ```ts
 * try {
 *   compileResourceTemplate('tickets/{id}')({});
 * } catch (e) {
 *   if (e instanceof ContractError && e.code === 'TASKPASS_CONTRACT_RESOURCE_UNDERIVABLE') {
 *     // map to this package's own code
 *   }
 * }
 * ```
 */
export class ContractError extends Error {
  override readonly name = 'ContractError';
  readonly code: ContractErrorCode;

  constructor(code: ContractErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.code = code;
  }
}
