// `taskpass-proxy <command>`: `guard` runs the enforcing reverse proxy, `proxy` the agent side for
// unmodified MCP hosts. The broker's `taskpass` command forwards `taskpass guard …` and
// `taskpass proxy …` here when this package is installed.
import { parseArgs } from 'node:util';
import { PROXY_USAGE } from './agent/cli.ts';

const USAGE = `Usage: taskpass-proxy guard --config <guard.yaml>   (or TASKPASS_GUARD_CONFIG)
       taskpass-proxy guard --print-config            an example configuration

  guard   an enforcing reverse proxy in front of an MCP server (Streamable HTTP or stdio):
          mTLS with its own SVID, every request verified like the embedded verifier does,
          the caller's identity passed upstream in Taskpass-* headers.

${PROXY_USAGE}`;

/** Where the CLI writes. */
export interface ProxyCliIo {
  out(s: string): void;
  err(s: string): void;
  env: NodeJS.ProcessEnv;
}

const defaultIo = (): ProxyCliIo => ({
  out: (s) => process.stdout.write(`${s}\n`),
  err: (s) => process.stderr.write(`${s}\n`),
  env: process.env,
});

/**
 * Runs the CLI; resolves with the exit code, or -1 while `guard` keeps running (it owns the exit).
 *
 * @example
 * ```ts
 * const code = await runCli(['guard', '--config', 'guard.yaml']);
 * ```
 */
export async function runCli(argv: readonly string[], io: ProxyCliIo = defaultIo()): Promise<number> {
  let values: {
    config?: string | undefined;
    'print-config'?: boolean | undefined;
    help?: boolean | undefined;
  };
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({
      args: [...argv],
      allowPositionals: true,
      options: {
        config: { type: 'string', short: 'c' },
        'print-config': { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (e) {
    io.err(`${(e as Error).message}\n${USAGE}`);
    return 2;
  }
  const [cmd] = positionals;
  if (values.help || !cmd) {
    io.out(USAGE);
    return values.help ? 0 : 2;
  }
  if (cmd === 'proxy') {
    const { runProxyCommand } = await import('./agent/cli.ts');
    return runProxyCommand(
      { config: values.config, printConfig: values['print-config'], positionals: positionals.slice(1) },
      io,
    );
  }
  if (cmd !== 'guard') {
    io.err(`unknown command "${cmd}"\n${USAGE}`);
    return 2;
  }
  const { EXAMPLE_CONFIG, loadGuardConfig } = await import('./guard/config.ts');
  if (values['print-config']) {
    io.out(EXAMPLE_CONFIG);
    return 0;
  }
  const file = values.config ?? io.env.TASKPASS_GUARD_CONFIG;
  if (!file) {
    io.err(`--config <file> (or TASKPASS_GUARD_CONFIG) is required\n${USAGE}`);
    return 2;
  }
  try {
    const config = loadGuardConfig(file, io.env);
    const { startGuard } = await import('./guard/server.ts');
    const guard = await startGuard(config);
    const stop = () => {
      void guard.close().then(() => process.exit(0));
    };
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
    return -1;
  } catch (e) {
    const code = (e as { code?: unknown }).code;
    io.err(`error: ${typeof code === 'string' ? `${code}: ` : ''}${(e as Error).message}`);
    return 1;
  }
}
