// Does `v8.setFlagsFromString('--no-turbo-inline-js-wasm-calls')` at run time (what
// broker/src/pdp/cedar/wasm.ts does before loading cedar-wasm) work like the command-line flag?
// V8 exposes no flag getter, so this measures it: a tight loop of calls into a one-instruction
// Wasm function is about twice as fast when TurboFan inlines the call. Prints each mode's cost as a
// ratio to the default (inlining on); `runtime` ≈ `command line` means the run-time switch works.
//
//   node --conditions=taskpass:source --import tsx bench/cedar-wasm-calls.ts
import { spawnSync } from 'node:child_process';
import { setFlagsFromString } from 'node:v8';

const FLAG = '--no-turbo-inline-js-wasm-calls';
// (module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))
const ADD = [0, 97, 115, 109, 1, 0, 0, 0, 1, 7, 1, 96, 2, 127, 127, 1, 127, 3, 2, 1, 0, 7, 7, 1, 3, 97, 100];
const WASM = Uint8Array.from([...ADD, 100, 0, 0, 10, 9, 1, 7, 0, 32, 0, 32, 1, 106, 11]);

// Not in this project's TypeScript lib (no DOM); Node has it.
const { WebAssembly: Wasm } = globalThis as unknown as {
  WebAssembly: {
    Module: new (b: Uint8Array) => object;
    Instance: new (m: object) => { exports: Record<string, unknown> };
  };
};

function measure(): number {
  if (process.argv[2] === 'runtime') setFlagsFromString(FLAG);
  const add = new Wasm.Instance(new Wasm.Module(WASM)).exports.add as (a: number, b: number) => number;
  const hot = (n: number) => {
    let s = 0;
    for (let i = 0; i < n; i++) s = add(s, i) | 0;
    return s;
  };
  hot(1e5);
  const t0 = process.hrtime.bigint();
  hot(1e8);
  return Number(process.hrtime.bigint() - t0) / 1e8;
}

if (process.argv[2]) process.stdout.write(`${measure()}\n`);
else {
  const run = (nodeArgs: string[], mode: string) =>
    Number(
      spawnSync(process.execPath, [...nodeArgs, '--import', 'tsx', import.meta.filename, mode], {
        encoding: 'utf8',
      }).stdout,
    );
  const base = run([], 'default');
  const cli = run([FLAG], 'cli');
  const runtime = run([], 'runtime');
  console.log(
    `Node ${process.version}: JS→Wasm call cost relative to inlining on (${base.toFixed(1)} ns/call)`,
  );
  console.log(`  flag on the command line  ${(cli / base).toFixed(2)}×`);
  console.log(`  flag set at run time      ${(runtime / base).toFixed(2)}×`);
}
