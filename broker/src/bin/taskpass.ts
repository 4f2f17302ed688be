#!/usr/bin/env node
// The installed `taskpass` command. A file of its own because npm runs a bin through a symlink in
// node_modules/.bin, so cli.ts's "am I the main module" check cannot recognise it.
import { runCli } from '../cli.ts';

// A negative code means `serve` is running and owns the process's exit.
const code = await runCli(process.argv.slice(2));
if (code >= 0) process.exitCode = code;
