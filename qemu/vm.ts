/**
 * Running a disk image under QEMU: OVMF firmware, the disk as virtio, the
 * serial console captured (and optionally mirrored to a file), a QMP socket
 * for hard reset and power-off, a cloud-init seed drive when asked, and user
 * networking with `restrict=on` whose only ways in and out are the forwards
 * asked for: a guestfwd to one port on the host's loopback, hostfwds from
 * 127.0.0.1 ports to guest ports.
 *
 * The procedure is in qemu/README.md. Tests use `Vm` directly; the CLI's
 * `abforge qemu` wraps it.
 */
import { type ChildProcess, spawn } from "node:child_process";
import {
  closeSync,
  copyFileSync,
  createWriteStream,
  existsSync,
  mkdtempSync,
  openSync,
  readSync,
  rmSync,
  type WriteStream,
} from "node:fs";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { requireTool } from "../src/exec.ts";
import { QemuError } from "./errors.ts";
import { makeSeed } from "./seed.ts";

export const OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd";
export const OVMF_VARS_TEMPLATE = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/** OVMF with Secure Boot, which needs SMM (q35,smm=on and a secure pflash) to keep its variables safe. */
export const OVMF_CODE_SECURE_BOOT = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
/**
 * Variables with Secure Boot on and Debian's test key ("snakeoil",
 * /usr/share/ovmf/PkKek-1-snakeoil.pem) enrolled as PK, KEK and db: what
 * the tests sign with. Test use only: its private key is public.
 */
export const OVMF_VARS_SECURE_BOOT_TEMPLATE = "/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd";
const PROXY = fileURLToPath(new URL("./proxy.ts", import.meta.url));

export interface GuestForward {
  /** Address and port the guest connects to (inside QEMU's user network). */
  guestAddress: string;
  guestPort: number;
  /** Port on the host's 127.0.0.1 that each connection is carried to. */
  hostPort: number;
}

/** A host port on 127.0.0.1 carried to a guest TCP port (QEMU `hostfwd`). */
export interface HostForward {
  hostPort: number;
  guestPort: number;
}

export type DiskFormat = "raw" | "qcow2";

/** qcow2 files start with `QFI\xfb`; anything else is taken as raw. */
export function detectDiskFormat(path: string): DiskFormat {
  const fd = openSync(path, "r");
  try {
    const magic = Buffer.alloc(4);
    readSync(fd, magic, 0, 4, 0);
    return magic.equals(Buffer.from([0x51, 0x46, 0x49, 0xfb])) ? "qcow2" : "raw";
  } finally {
    closeSync(fd);
  }
}

/** PCI slot of the seed drive: after the NIC's 0x6, so nothing else moves. */
const SEED_ADDRESS = "0x7";

/** PCI slots of `extraDisks`, in order: all below the boot disk's 0x5. */
const EXTRA_DISK_ADDRESSES = ["0x4", "0x3", "0x2"] as const;

export interface VmOptions {
  disk: string;
  /** The boot disk's format; `Vm.start` detects it from the file when absent. */
  diskFormat?: DiskFormat;
  /**
   * More disks, as virtio-blk at lower PCI addresses than `disk` (0x4, 0x3,
   * 0x2) and without a bootindex: OVMF boots `disk`, while Linux names these
   * first (vda, ...) and the boot disk after them. At most three, all raw.
   */
  extraDisks?: readonly string[];
  /** Mirror of the serial console. */
  serialLog?: string;
  memMb?: number;
  kvm?: boolean;
  forward?: GuestForward;
  /** Forward 127.0.0.1:sshPort to the guest's port 22. */
  sshPort?: number;
  /** More 127.0.0.1 ports carried to guest ports. */
  hostForwards?: readonly HostForward[];
  /**
   * cloud-init user-data file: `Vm.start` makes a NoCloud seed drive from it
   * (qemu/seed.ts) in its temp directory and attaches it read-only.
   */
  userData?: string;
  /** meta-data for that seed (default: an instance-id derived from the user-data). */
  metaData?: string;
  /** A seed image made already (makeSeed), attached read-only; not with `userData`. */
  seedDisk?: string;
  /** Writable OVMF variables; default `<disk>.ovmf-vars.fd` (`.ovmf-vars-sb.fd` with secureBoot), created from the template. */
  varsPath?: string;
  /**
   * Secure Boot enforced: OVMF_CODE_4M.secboot.fd with SMM, and variables
   * from OVMF_VARS_4M.snakeoil.fd (Debian's test key in db).
   */
  secureBoot?: boolean;
  /** Called with each chunk of console output (e.g. to mirror it to stdout). */
  onConsole?: (text: string) => void;
}

export type VmExit = { kind: "exited"; code: number | null; signal: NodeJS.Signals | null };

export interface WaitOptions {
  timeoutMs: number;
  /** Only look at console output from this offset on (default: everything since the last match). */
  from?: number;
}

let commandCounter = 0;

export class Vm {
  readonly options: VmOptions;
  readonly process: ChildProcess;
  readonly exited: Promise<VmExit>;
  private readonly workDir: string;
  private readonly qmpPath: string;
  private consoleText = "";
  private cursor = 0;
  private log: WriteStream | undefined;
  private waiters = new Set<() => void>();
  private hasExited = false;

  private constructor(options: VmOptions, child: ChildProcess, workDir: string, qmpPath: string) {
    this.options = options;
    this.process = child;
    this.workDir = workDir;
    this.qmpPath = qmpPath;
    if (options.serialLog) this.log = createWriteStream(options.serialLog, { flags: "a" });
    child.stdout?.setEncoding("utf8");
    child.stdout?.on("data", (chunk: string) => this.onOutput(chunk));
    let stderr = "";
    child.stderr?.setEncoding("utf8");
    child.stderr?.on("data", (chunk: string) => {
      stderr += chunk;
    });
    this.exited = new Promise((resolve) => {
      child.on("exit", (code, signal) => {
        this.hasExited = true;
        if (stderr.trim()) this.onOutput(`\n[qemu stderr] ${stderr.trim()}\n`);
        this.log?.end();
        for (const wake of this.waiters) wake();
        rmSync(this.workDir, { recursive: true, force: true });
        resolve({ kind: "exited", code, signal });
      });
    });
  }

  /** Build QEMU's argument list (exported for the CLI's --dry-run and for tests). */
  static args(options: VmOptions, qmpPath: string, varsPath: string): string[] {
    const hostForwards = checkHostForwards(options);
    const sb = options.secureBoot === true;
    const args = [
      "-machine",
      sb ? "q35,smm=on" : "q35",
      // Secure Boot OVMF keeps its variables writable only from SMM.
      ...(sb ? ["-global", "driver=cfi.pflash01,property=secure,value=on"] : []),
      "-accel",
      options.kvm ? "kvm" : "tcg",
      "-m",
      String(options.memMb ?? 1024),
      "-smp",
      "1",
      "-display",
      "none",
      // A display adapter with no display: OVMF offers GOP, and GRUB (efi_gop)
      // hands the kernel a video mode instead of printing "error: no
      // suitable video mode found" at every boot; the console stays on ttyS0.
      "-vga",
      "std",
      "-drive",
      `if=pflash,format=raw,readonly=on,file=${sb ? OVMF_CODE_SECURE_BOOT : OVMF_CODE}`,
      "-drive",
      `if=pflash,format=raw,file=${varsPath}`,
      // Fixed PCI addresses and bootindex: the OVMF variables kept beside the
      // disk remember boot entries by device path, so adding a NIC must not
      // move the disk, and the disk boots first whatever the variables say.
      "-drive",
      `file=${options.disk},format=${options.diskFormat ?? "raw"},if=none,id=disk0,cache=unsafe`,
      "-device",
      "virtio-blk-pci,drive=disk0,addr=0x5,bootindex=0",
      ...(options.extraDisks ?? []).flatMap((file, i) => [
        "-drive",
        `file=${file},format=raw,if=none,id=disk${i + 1},cache=unsafe`,
        "-device",
        `virtio-blk-pci,drive=disk${i + 1},addr=${EXTRA_DISK_ADDRESSES[i]}`,
      ]),
      ...(options.seedDisk
        ? [
            "-drive",
            `file=${options.seedDisk},format=raw,if=none,id=seed,readonly=on`,
            "-device",
            `virtio-blk-pci,drive=seed,addr=${SEED_ADDRESS}`,
          ]
        : []),
      "-chardev",
      "stdio,id=ser0,signal=off",
      "-serial",
      "chardev:ser0",
      "-qmp",
      `unix:${qmpPath},server=on,wait=off`,
    ];
    const netdev = ["user", "id=n0", "restrict=on"];
    if (options.forward) {
      const f = options.forward;
      // QEMU starts the command once per guest connection, with the connection on
      // its stdin/stdout; the proxy carries it to 127.0.0.1:hostPort.
      const node = process.execPath;
      const cmd = `${node} --disable-warning=ExperimentalWarning ${PROXY} ${f.hostPort}`;
      netdev.push(`guestfwd=tcp:${f.guestAddress}:${f.guestPort}-cmd:${cmd}`);
    }
    // restrict=on leaves explicit forwards working: these are the only way in.
    for (const h of hostForwards)
      netdev.push(`hostfwd=tcp:127.0.0.1:${h.hostPort}-:${h.guestPort}`);
    if (options.forward || hostForwards.length > 0) {
      args.push(
        "-netdev",
        netdev.join(","),
        "-device",
        "virtio-net-pci,netdev=n0,addr=0x6,romfile=",
      );
    } else {
      args.push("-nic", "none");
    }
    return args;
  }

  static async start(options: VmOptions): Promise<Vm> {
    const qemu = requireTool("qemu-system-x86_64");
    const extra = options.extraDisks ?? [];
    if (extra.length > EXTRA_DISK_ADDRESSES.length) {
      throw new QemuError(
        "QEMU_BAD_DISK",
        `${extra.length} extra disks: at most ${EXTRA_DISK_ADDRESSES.length} fit below the boot disk's PCI address`,
        { details: { extraDisks: extra } },
      );
    }
    for (const disk of [options.disk, ...extra]) {
      if (!existsSync(disk)) {
        throw new QemuError("QEMU_BAD_DISK", `disk image ${disk} does not exist`, {
          details: { disk },
        });
      }
    }
    const [code, template] = options.secureBoot
      ? [OVMF_CODE_SECURE_BOOT, OVMF_VARS_SECURE_BOOT_TEMPLATE]
      : [OVMF_CODE, OVMF_VARS_TEMPLATE];
    for (const f of [code, template]) {
      if (!existsSync(f)) {
        throw new QemuError(
          "QEMU_FAILED",
          `firmware ${f} is missing (install the Debian package ovmf)`,
        );
      }
    }
    if (options.userData !== undefined && options.seedDisk !== undefined) {
      throw new QemuError(
        "QEMU_BAD_SEED",
        `both userData (${options.userData}) and seedDisk (${options.seedDisk}) given: a VM has one seed drive`,
      );
    }
    if (options.seedDisk !== undefined && !existsSync(options.seedDisk)) {
      throw new QemuError("QEMU_BAD_SEED", `seed image ${options.seedDisk} does not exist`, {
        details: { path: options.seedDisk },
      });
    }
    checkHostForwards(options);
    const varsPath =
      options.varsPath ?? `${options.disk}.ovmf-vars${options.secureBoot ? "-sb" : ""}.fd`;
    const workDir = mkdtempSync(join(tmpdir(), "abforge-qemu-"));
    let resolved: VmOptions = {
      ...options,
      diskFormat: options.diskFormat ?? detectDiskFormat(options.disk),
    };
    try {
      if (options.userData !== undefined) {
        const seed = await makeSeed({
          outPath: join(workDir, "seed.img"),
          userData: options.userData,
          ...(options.metaData !== undefined ? { metaData: options.metaData } : {}),
        });
        resolved = { ...resolved, seedDisk: seed.path };
      }
    } catch (err) {
      rmSync(workDir, { recursive: true, force: true });
      throw err;
    }
    if (!existsSync(varsPath)) copyFileSync(template, varsPath);
    const qmpPath = join(workDir, "qmp.sock");
    const child = spawn(qemu, Vm.args(resolved, qmpPath, varsPath), {
      stdio: ["pipe", "pipe", "pipe"],
    });
    const vm = new Vm(resolved, child, workDir, qmpPath);
    await new Promise<void>((resolve, reject) => {
      child.once("spawn", () => resolve());
      child.once("error", (cause) =>
        reject(new QemuError("QEMU_FAILED", `qemu could not start: ${cause.message}`, { cause })),
      );
    });
    return vm;
  }

  get running(): boolean {
    return !this.hasExited;
  }

  /** Everything the serial console printed so far. */
  get console(): string {
    return this.consoleText;
  }

  /** Offset into the console output: pass it as `from` to wait only for what comes next. */
  mark(): number {
    return this.consoleText.length;
  }

  private onOutput(chunk: string): void {
    this.consoleText += chunk;
    this.log?.write(chunk);
    this.options.onConsole?.(chunk);
    for (const wake of this.waiters) wake();
  }

  /** The last lines of the console, for error messages. */
  tail(lines = 30): string {
    return this.consoleText.split("\n").slice(-lines).join("\n");
  }

  /**
   * Wait until `pattern` appears on the console after `from` (default: after the
   * previous match). Resolves with the match; on timeout or VM exit rejects
   * with the console's tail.
   */
  waitFor(pattern: RegExp | string, options: WaitOptions): Promise<RegExpExecArray> {
    const re =
      typeof pattern === "string"
        ? new RegExp(pattern.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"))
        : new RegExp(pattern.source, pattern.flags.replace("g", ""));
    const from = options.from ?? this.cursor;
    return new Promise((resolve, reject) => {
      const check = (): boolean => {
        const m = re.exec(this.consoleText.slice(from));
        if (m) {
          this.cursor = from + m.index + m[0].length;
          finish();
          resolve(m);
          return true;
        }
        if (this.hasExited) {
          finish();
          reject(
            new QemuError(
              "QEMU_FAILED",
              `VM exited while waiting for ${re}; console tail:\n${this.tail()}`,
            ),
          );
          return true;
        }
        return false;
      };
      const timer = setTimeout(() => {
        finish();
        reject(
          new QemuError(
            "QEMU_TIMEOUT",
            `timed out after ${options.timeoutMs} ms waiting for ${re}; console tail:\n${this.tail()}`,
          ),
        );
      }, options.timeoutMs);
      const finish = () => {
        clearTimeout(timer);
        this.waiters.delete(wake);
      };
      const wake = () => {
        check();
      };
      if (!check()) this.waiters.add(wake);
    });
  }

  /** Type a line into the guest's console. */
  sendLine(line: string): void {
    this.process.stdin?.write(`${line}\n`);
  }

  /**
   * Run a shell command in the guest's root shell and return its output and
   * exit status. Markers around the command delimit the answer.
   */
  async run(
    command: string,
    options: { timeoutMs?: number } = {},
  ): Promise<{ output: string; status: number }> {
    const id = `${Date.now().toString(36)}${(commandCounter++).toString(36)}`;
    const begin = `__ABF_BEGIN_${id}__`;
    const end = `__ABF_END_${id}__`;
    const from = this.mark();
    // The markers are split in the typed line so the echoed command never matches.
    this.sendLine(
      `echo ${begin.slice(0, 6)}''${begin.slice(6)}; ${command}; echo ${end.slice(0, 6)}''${end.slice(6)} $?`,
    );
    const m = await this.waitFor(new RegExp(`${begin}\\r?\\n([\\s\\S]*?)${end} (\\d+)`), {
      timeoutMs: options.timeoutMs ?? 60_000,
      from,
    });
    return { output: (m[1] ?? "").replace(/\r/g, ""), status: Number(m[2]) };
  }

  /** Send one QMP command and return its result. */
  async qmp(execute: string, args?: Record<string, unknown>): Promise<unknown> {
    const socket = await connectWithRetry(this.qmpPath, 10_000);
    try {
      const lines = lineReader(socket);
      await lines.next(); // greeting
      socket.write(`${JSON.stringify({ execute: "qmp_capabilities" })}\n`);
      await readReturn(lines);
      socket.write(`${JSON.stringify(args ? { execute, arguments: args } : { execute })}\n`);
      return await readReturn(lines);
    } finally {
      socket.destroy();
    }
  }

  /** Hard reset, like pressing the reset button: the disk keeps what was written. */
  async reset(): Promise<void> {
    await this.qmp("system_reset");
  }

  /** Power off now (QMP quit) and wait for QEMU to exit. */
  async powerOff(): Promise<VmExit> {
    if (this.hasExited) return this.exited;
    try {
      await this.qmp("quit");
    } catch {
      this.process.kill("SIGKILL");
    }
    return this.exited;
  }

  /** Make sure QEMU is gone (tests call this in afterEach, even when they fail). */
  async kill(): Promise<void> {
    if (this.hasExited) return;
    this.process.kill("SIGKILL");
    await this.exited;
  }
}

/**
 * The hostfwds a VM gets (`sshPort` first, as guest port 22): every port
 * 1-65535, no host port twice (QEMU would refuse to start).
 */
export function checkHostForwards(options: VmOptions): HostForward[] {
  const all = [
    ...(options.sshPort === undefined ? [] : [{ hostPort: options.sshPort, guestPort: 22 }]),
    ...(options.hostForwards ?? []),
  ];
  const seen = new Set<number>();
  for (const f of all) {
    for (const [side, port] of [
      ["host", f.hostPort],
      ["guest", f.guestPort],
    ] as const) {
      if (!Number.isInteger(port) || port < 1 || port > 65535) {
        throw new QemuError(
          "QEMU_BAD_FORWARD",
          `forward ${f.hostPort}:${f.guestPort}: the ${side} port must be 1-65535`,
          { details: { hostPort: f.hostPort, guestPort: f.guestPort } },
        );
      }
    }
    if (seen.has(f.hostPort)) {
      throw new QemuError(
        "QEMU_BAD_FORWARD",
        `host port ${f.hostPort} is forwarded twice (--ssh-port and --forward share 127.0.0.1)`,
        { details: { hostPort: f.hostPort } },
      );
    }
    seen.add(f.hostPort);
  }
  if (options.forward && seen.has(options.forward.hostPort)) {
    // the repository listens there: QEMU could not bind the hostfwd
    throw new QemuError(
      "QEMU_BAD_FORWARD",
      `host port ${options.forward.hostPort} is both the repository the guest reaches and a port forwarded into the guest`,
      { details: { hostPort: options.forward.hostPort } },
    );
  }
  return all;
}

async function connectWithRetry(path: string, timeoutMs: number): Promise<Socket> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await new Promise<Socket>((resolve, reject) => {
        const s = connect(path);
        s.once("connect", () => resolve(s));
        s.once("error", reject);
      });
    } catch (cause) {
      if (Date.now() > deadline) {
        throw new QemuError("QEMU_FAILED", `cannot reach QEMU's QMP socket ${path}`, { cause });
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

async function* lineReader(socket: Socket): AsyncGenerator<string> {
  let buffer = "";
  socket.setEncoding("utf8");
  for await (const chunk of socket) {
    buffer += chunk;
    let nl = buffer.indexOf("\n");
    while (nl >= 0) {
      const line = buffer.slice(0, nl).trim();
      buffer = buffer.slice(nl + 1);
      if (line) yield line;
      nl = buffer.indexOf("\n");
    }
  }
}

async function readReturn(lines: AsyncGenerator<string>): Promise<unknown> {
  for (;;) {
    const { value, done } = await lines.next();
    if (done) throw new QemuError("QEMU_FAILED", "QMP connection closed");
    const msg = JSON.parse(value) as { return?: unknown; error?: { desc: string }; event?: string };
    if (msg.event) continue;
    if (msg.error) throw new QemuError("QEMU_FAILED", `QMP error: ${msg.error.desc}`);
    return msg.return;
  }
}
