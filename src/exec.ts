/**
 * Running the external tools abforge relies on (mksquashfs, mkfs.vfat,
 * grub-mkimage, ...). A tool that is not installed is a `TOOL_MISSING` error
 * naming the Debian package to install; a tool that fails is `TOOL_FAILED`
 * with its stderr tail.
 *
 * Inside `withToolSignal(signal, fn)` every tool that `fn` starts, however
 * deep, runs as the leader of its own process group; when the signal aborts,
 * each group (the tool and whatever it started) gets SIGTERM, then SIGKILL
 * after `KILL_AFTER_MS`, and `run` settles only once the tool has exited, so
 * the caller may remove the files it was writing.
 */
import { AsyncLocalStorage } from "node:async_hooks";
import { spawn } from "node:child_process";
import { accessSync, constants } from "node:fs";
import { delimiter, join } from "node:path";
import { ToolError } from "./errors.ts";
import { logger } from "./log.ts";

/** Which Debian 12 package provides each tool we run. */
export const TOOL_PACKAGES: Record<string, string> = {
  mksquashfs: "squashfs-tools",
  unsquashfs: "squashfs-tools",
  "mkfs.erofs": "erofs-utils",
  veritysetup: "cryptsetup-bin",
  dmsetup: "dmsetup",
  kexec: "kexec-tools",
  sgdisk: "gdisk",
  sfdisk: "fdisk",
  "grub-editenv": "grub-common",
  "grub-mkimage": "grub-common",
  "grub-mkstandalone": "grub-common",
  sbsign: "sbsigntool",
  sbverify: "sbsigntool",
  "mkfs.vfat": "dosfstools",
  "mkfs.ext4": "e2fsprogs",
  resize2fs: "e2fsprogs",
  e2fsck: "e2fsprogs",
  resizepart: "util-linux",
  partx: "util-linux",
  mmd: "mtools",
  mcopy: "mtools",
  mdir: "mtools",
  busybox: "busybox-static",
  cpio: "cpio",
  depmod: "kmod",
  modinfo: "kmod",
  "qemu-system-x86_64": "qemu-system-x86",
  "apt-get": "apt",
  stdbuf: "coreutils",
  "dpkg-deb": "dpkg",
  debootstrap: "debootstrap",
  xz: "xz-utils",
  curl: "curl",
  "qemu-img": "qemu-utils",
  tar: "tar",
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
  /**
   * Each chunk of the tool's stdout as it arrives (it is captured as well).
   * The tool runs under `stdbuf -oL` when coreutils has it, so that each line
   * it prints through stdio arrives as it is printed, not in 4 KiB batches.
   */
  onStdout?: (chunk: Buffer) => void;
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

const scope = new AsyncLocalStorage<AbortSignal>();

/** How long a tool has, after SIGTERM, before its process group gets SIGKILL. */
export const KILL_AFTER_MS = 2000;

/**
 * Run `fn` so that the tools it starts are stopped, as process groups, when
 * `signal` aborts (see the module comment); a tool started after that is not
 * started at all.
 */
export function withToolSignal<T>(signal: AbortSignal, fn: () => Promise<T>): Promise<T> {
  return scope.run(signal, fn);
}

/** Run a tool to completion, capturing its output. */
export function run(
  tool: string,
  args: readonly string[],
  options: RunOptions = {},
): Promise<RunResult> {
  const path = requireTool(tool);
  const abort = scope.getStore();
  if (abort?.aborted) {
    return Promise.reject(
      new ToolError("TOOL_FAILED", `${tool} not started: ${String(abort.reason)}`, {
        details: { tool, args },
      }),
    );
  }
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const stdbuf = options.onStdout ? findTool("stdbuf") : undefined;
    const [file, argv] = stdbuf ? [stdbuf, ["-oL", path, ...args]] : [path, args];
    const child = spawn(file, argv, {
      cwd: options.cwd,
      env: options.env ?? process.env,
      stdio: ["pipe", "pipe", "pipe"],
      // Its own process group, so that stopping it stops what it started too.
      detached: abort !== undefined,
    });
    let killTimer: NodeJS.Timeout | undefined;
    const stop = () => {
      const group = child.pid;
      if (group === undefined) return;
      const kill = (sig: NodeJS.Signals) => {
        try {
          process.kill(-group, sig);
        } catch (e) {
          // ESRCH: the group is gone already
          if ((e as NodeJS.ErrnoException).code !== "ESRCH") throw e;
        }
      };
      kill("SIGTERM");
      killTimer = setTimeout(() => kill("SIGKILL"), KILL_AFTER_MS);
    };
    abort?.addEventListener("abort", stop, { once: true });
    if (child.pid !== undefined) {
      logger()
        .child({ module: "exec" })
        .debug({ tool, args, pid: child.pid, ownGroup: abort !== undefined }, `${tool} started`);
    }
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (d: Buffer) => {
      out.push(d);
      options.onStdout?.(d);
    });
    child.stderr.on("data", (d: Buffer) => err.push(d));
    child.on("error", (cause) =>
      reject(new ToolError("TOOL_FAILED", `${tool} could not start: ${cause.message}`, { cause })),
    );
    child.on("close", (code, signal) => {
      abort?.removeEventListener("abort", stop);
      clearTimeout(killTimer);
      toolTime.set(tool, (toolTime.get(tool) ?? 0) + performance.now() - started);
      const result = {
        code: code ?? 128,
        stdout: Buffer.concat(out).toString("utf8"),
        stderr: Buffer.concat(err).toString("utf8"),
      };
      if (abort?.aborted) {
        return reject(
          new ToolError("TOOL_FAILED", `${tool} stopped: ${String(abort.reason)}`, {
            details: { tool, args, exitCode: result.code, signal },
          }),
        );
      }
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
