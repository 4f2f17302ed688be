// Loads @cedar-policy/cedar-wasm once per process, through its Node.js (CommonJS) entry point: that
// one compiles the bundled .wasm synchronously at require time and works the same on Node 20, 22
// and 24 (the package's default ESM entry needs --experimental-wasm-modules on Node 20 and 22).
//
// Before the module is loaded, V8's inlining of JS-to-Wasm calls is turned off: Node 20's V8 (11.3)
// aborts in a deoptimization path when TurboFan has inlined a call into cedar-wasm and that code
// deoptimizes under load. The flag is read whenever TurboFan compiles a function, so setting it
// before the first call into Cedar is enough (docs/decisions.md, "Cedar on Node 20").
import { createRequire } from 'node:module';
import { setFlagsFromString } from 'node:v8';

export type CedarWasm = typeof import('@cedar-policy/cedar-wasm/nodejs');

/** The V8 flag that keeps cedar-wasm from aborting Node 20 under load. */
export const NO_INLINE_WASM_CALLS = '--no-turbo-inline-js-wasm-calls';

let cedar: CedarWasm | undefined;

/** The Cedar engine (loaded on first use, with {@link NO_INLINE_WASM_CALLS} set first). */
export function cedarWasm(): CedarWasm {
  if (!cedar) {
    if (process.env.TASKPASS_CEDAR_INLINE_WASM_CALLS !== '1') setFlagsFromString(NO_INLINE_WASM_CALLS);
    cedar = createRequire(import.meta.url)('@cedar-policy/cedar-wasm/nodejs') as CedarWasm;
  }
  return cedar;
}
