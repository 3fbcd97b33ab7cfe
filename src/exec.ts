/**
 * Running the external tools abforge relies on (mksquashfs, mkfs.vfat,
 * grub-mkimage, ...). A tool that is not installed is a `TOOL_MISSING` error
 * naming the Debian package to install; a tool that fails is `TOOL_FAILED`
 * with its stderr tail.
 */
import { spawn } from "node:child_process";
import { accessSync, constants } from "node:fs";
import { delimiter, join } from "node:path";
import { ToolError } from "./errors.ts";

/** Which Debian 12 package provides each tool we run. */
export const TOOL_PACKAGES: Record<string, string> = {
  mksquashfs: "squashfs-tools",
  unsquashfs: "squashfs-tools",
  "mkfs.erofs": "erofs-utils",
  veritysetup: "cryptsetup-bin",
  dmsetup: "dmsetup",
  sgdisk: "gdisk",
  sfdisk: "fdisk",
  "grub-editenv": "grub-common",
  "grub-mkimage": "grub-common",
  "grub-mkstandalone": "grub-common",
  "mkfs.vfat": "dosfstools",
  "mkfs.ext4": "e2fsprogs",
  mmd: "mtools",
  mcopy: "mtools",
  mdir: "mtools",
  busybox: "busybox-static",
  cpio: "cpio",
  depmod: "kmod",
  modinfo: "kmod",
  "qemu-system-x86_64": "qemu-system-x86",
  "apt-get": "apt",
  "dpkg-deb": "dpkg",
  debootstrap: "debootstrap",
  xz: "xz-utils",
  curl: "curl",
};

const EXTRA_PATH = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/** Absolute path of a tool, searching PATH and the sbin directories; undefined when absent. */
export function findTool(name: string): string | undefined {
  if (name.includes("/")) return name;
  const dirs = [...(process.env.PATH ?? "").split(delimiter), ...EXTRA_PATH];
  for (const dir of dirs) {
    if (!dir) continue;
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not in this directory
    }
  }
  return undefined;
}

/** Like findTool, but a missing tool is a clear error naming its package. */
export function requireTool(name: string): string {
  const found = findTool(name);
  if (found) return found;
  const pkg = TOOL_PACKAGES[name];
  throw new ToolError(
    "TOOL_MISSING",
    `${name} is not installed${pkg ? ` (install the Debian package ${pkg}: apt-get install ${pkg})` : ""}`,
    { details: { tool: name, package: pkg } },
  );
}

export interface RunOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  input?: string | Uint8Array;
  /** Resolve instead of throwing when the exit status is not 0. */
  allowFailure?: boolean;
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

const toolTime = new Map<string, number>();

/**
 * Milliseconds spent waiting for each external tool since the process started
 * (or since `resetToolTime`): the build benchmark subtracts it from the total
 * to measure abforge's own overhead.
 */
export function toolTimeMs(): Map<string, number> {
  return new Map(toolTime);
}

export function resetToolTime(): void {
  toolTime.clear();
}

/** Run a tool to completion, capturing its output. */
export function run(
  tool: string,
  args: readonly string[],
  options: RunOptions = {},
): Promise<RunResult> {
  const path = requireTool(tool);
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const child = spawn(path, args, {
      cwd: options.cwd,
      env: options.env ?? process.env,
      stdio: ["pipe", "pipe", "pipe"],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (d: Buffer) => out.push(d));
    child.stderr.on("data", (d: Buffer) => err.push(d));
    child.on("error", (cause) =>
      reject(new ToolError("TOOL_FAILED", `${tool} could not start: ${cause.message}`, { cause })),
    );
    child.on("close", (code, signal) => {
      toolTime.set(tool, (toolTime.get(tool) ?? 0) + performance.now() - started);
      const result = {
        code: code ?? 128,
        stdout: Buffer.concat(out).toString("utf8"),
        stderr: Buffer.concat(err).toString("utf8"),
      };
      if (result.code === 0 || options.allowFailure) return resolve(result);
      const tail = result.stderr.trim().split("\n").slice(-5).join("\n");
      const full = result.stderr + result.stdout;
      const code_ = /No space left on device/i.test(full) ? "DISK_FULL" : "TOOL_FAILED";
      reject(
        new ToolError(
          code_,
          `${tool} ${args.join(" ")} failed (${signal ?? `exit ${result.code}`})${tail ? `: ${tail}` : ""}`,
          { details: { tool, args, exitCode: result.code, signal, stderr: tail } },
        ),
      );
    });
    // A tool that exits without reading stdin closes the pipe before our
    // write lands: that EPIPE is no failure (the exit status tells).
    child.stdin.on("error", () => {});
    child.stdin.end(options.input ?? "");
  });
}
