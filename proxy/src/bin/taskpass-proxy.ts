#!/usr/bin/env node
// The installed `taskpass-proxy` command (a file of its own: npm runs a bin through a symlink, so
// cli.ts could not recognise itself as the main module).
import { runCli } from '../cli.ts';

// A negative code means `guard` is running and owns the process's exit.
const code = await runCli(process.argv.slice(2));
if (code >= 0) process.exitCode = code;
