/** Run the real abforge binary, the way an operator does. */
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";

export const ABFORGE = fileURLToPath(new URL("../../bin/abforge", import.meta.url));

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function abforge(
  args: readonly string[],
  options: { env?: NodeJS.ProcessEnv; cwd?: string; input?: string } = {},
): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(ABFORGE, args, {
      cwd: options.cwd,
      env: { ...process.env, ABFORGE_LOG_FORMAT: "json", ...options.env },
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => {
      stdout += d;
    });
    child.stderr.on("data", (d) => {
      stderr += d;
    });
    child.on("error", reject);
    child.on("close", (code) => resolve({ code: code ?? 128, stdout, stderr }));
    child.stdin.end(options.input ?? "");
  });
}
