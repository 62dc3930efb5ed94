// A real nexusd for the tests: `nexusd serve` on a free loopback port with a
// temporary data directory, stopped when the test ends.

import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("../../../", import.meta.url));

/** The nexusd command: $NEXUSD_BIN, else the project's .venv, else PATH. */
export function nexusdCommand() {
  if (process.env.NEXUSD_BIN) return process.env.NEXUSD_BIN;
  const venv = join(ROOT, ".venv", "bin", "nexusd");
  return existsSync(venv) ? venv : "nexusd";
}

/** Starts nexusd with `args`; resolves {url, stop()} once it listens. */
export function startDaemon(t, ...args) {
  const dir = mkdtempSync(join(tmpdir(), "nexusd-js-"));
  const child = spawn(nexusdCommand(), [
    "serve", "--socket", join(dir, "n.sock"), "--ws", "127.0.0.1:0", "--data", join(dir, "data"),
    "--durability", "memory", "--http", "127.0.0.1:0", ...args,
  ], { stdio: ["ignore", "pipe", "pipe"] });
  let log = "";
  const stop = async () => {
    if (child.exitCode === null) {
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.kill("SIGTERM");
      await exited;
    }
    rmSync(dir, { recursive: true, force: true });
  };
  t.after(stop);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`nexusd did not start:\n${log}`)), 20000);
    const read = (chunk) => {
      log += chunk;
      const m = log.match(/listening on (ws:\/\/[^\s/]+)\//);
      if (m) {
        clearTimeout(timer);
        resolve({ url: `${m[1]}/`, stop, log: () => log });
      }
    };
    child.stdout.setEncoding("utf-8").on("data", read);
    child.stderr.setEncoding("utf-8").on("data", read);
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`nexusd exited (${code}):\n${log}`));
    });
  });
}
