// `taskpass proxy`: the agent side for MCP hosts that cannot be changed. The host launches it as a
// stdio MCP server (or connects over HTTP on loopback); stdout is the MCP channel, so everything
// for people — usage, errors, the device login — goes to stderr.
import { resolve } from 'node:path';
import type { ProxyCliIo } from '../cli.ts';
import { CONFIG_HOSTS, type ConfigHost, hostConfig, loadProxyConfig } from './config.ts';

export const PROXY_USAGE = `       taskpass-proxy proxy --config <proxy.yaml>     (or TASKPASS_PROXY_CONFIG)
       taskpass-proxy proxy --print-config <host> [--config <proxy.yaml>]
                                               host: ${CONFIG_HOSTS.join(', ')}

  proxy   the agent side for an MCP host you cannot change: the host launches it as an MCP
          server (stdio, or Streamable HTTP on loopback); it opens a Taskpass task for the
          configured user and purpose and forwards tool calls to the upstream MCP servers,
          each with a fresh call token. Refusals reach the host as readable tool errors.`;

/**
 * Runs `proxy`: prints a host configuration, or starts serving. Resolves with the exit code, or
 * -1 while the proxy runs (it owns the process's exit: 0 once the host disconnects or on
 * SIGTERM/SIGINT after completing the task; 1 on a crash, after cancelling it).
 */
export async function runProxyCommand(
  args: { config?: string | undefined; printConfig?: boolean | undefined; positionals: readonly string[] },
  io: ProxyCliIo,
): Promise<number> {
  const file = args.config ?? io.env.TASKPASS_PROXY_CONFIG;
  if (args.printConfig) {
    const host = (args.positionals[0] ?? 'yaml') as ConfigHost;
    if (!CONFIG_HOSTS.includes(host)) {
      io.err(`unknown host "${host}": one of ${CONFIG_HOSTS.join(', ')}`);
      return 2;
    }
    const { where, text } = hostConfig(host, file ? resolve(file) : '/absolute/path/to/proxy.yaml');
    io.err(`# ${where}`); // stderr: stdout is the text alone, ready to redirect into place
    io.out(text);
    return 0;
  }
  if (!file) {
    io.err(`--config <file> (or TASKPASS_PROXY_CONFIG) is required\nUsage:\n${PROXY_USAGE}`);
    return 2;
  }
  let running: Awaited<ReturnType<typeof import('./server.ts').startProxy>>;
  try {
    const config = loadProxyConfig(file);
    const { startProxy } = await import('./server.ts');
    running = await startProxy(config, { env: io.env, prompt: io.err });
  } catch (e) {
    const code = (e as { code?: unknown }).code;
    io.err(`error: ${typeof code === 'string' ? `${code}: ` : ''}${(e as Error).message}`);
    return 1;
  }
  const stop = (status: 'completed' | 'cancelled', exitCode: number) => {
    void running
      .close(status)
      .catch(() => undefined)
      .then(() => process.exit(exitCode));
  };
  void running.hostGone.then(() => stop('completed', 0));
  process.once('SIGTERM', () => stop('completed', 0));
  process.once('SIGINT', () => stop('completed', 0));
  // A crash cancels the task, so nothing it was granted outlives the process.
  const crash = (e: unknown) => {
    io.err(`error: the proxy crashed: ${(e as Error)?.stack ?? String(e)}`);
    stop('cancelled', 1);
  };
  process.once('uncaughtException', crash);
  process.once('unhandledRejection', crash);
  return -1;
}
