/**
 * Shared pieces of the fault suite (README.md in this folder):
 *
 * - `AgentProcess`: the real `abforge` binary as a child process, its JSON
 *   log lines on stderr as they arrive, and `kill -9`.
 * - `checkGuarantees`: after any fault, the guarantees on a disk image — the
 *   booted slot's bytes are the ones from before, the boot state parses and
 *   boots a good slot, every slot the boot state could boot (good or with
 *   tries left) verifies against its root hash, and the agent's state file
 *   parses and validates.
 * - `StallProxy`: an HTTP proxy in front of a real `serve()` that forwards a
 *   bundle's bytes only up to a chosen absolute offset and then holds the
 *   connection open: the agent is stopped at an exact byte of the download.
 * - a ustar writer for hand-made (hostile) tar files, and `bundleParts` to
 *   take a real bundle apart.
 * - `recordFigure`: figures for the summary printed at the end of the suite.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { appendFileSync, readFileSync } from "node:fs";
import { open, readdir, readFile } from "node:fs/promises";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import {
  BootDisk,
  type BootState,
  nextBootSlot,
  parseSlotVerity,
  SLOT_NAMES,
  type SlotName,
} from "../../src/bootloader/index.ts";
import { isBaseError } from "../../src/errors.ts";
import { validateState } from "../../src/updater/index.ts";
import { verifyVerity } from "../../src/verity/index.ts";
import { ABFORGE } from "../helpers/cli.ts";
import type { ByteRange, DiskFixture } from "../helpers/fixtures.ts";

// ---------------------------------------------------------------- figures

/** Append one figure for the end-of-suite summary (figures.ts prints them). */
export function recordFigure(key: string, value: number | string): void {
  const file = process.env.ABFORGE_FAULT_FIGURES;
  if (file) appendFileSync(file, `${JSON.stringify({ key, value })}\n`);
}

export function readFigures(file: string): { key: string; value: number | string }[] {
  let text = "";
  try {
    text = readFileSync(file, "utf8");
  } catch {
    return [];
  }
  return text
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l) as { key: string; value: number | string });
}

// ---------------------------------------------------------------- hashing and bytes

export function sha256(b: Uint8Array): string {
  return createHash("sha256").update(b).digest("hex");
}

/** sha256 of a region of a file (streamed in 1 MiB reads). */
export async function sha256Range(path: string, r: ByteRange): Promise<string> {
  const fh = await open(path, "r");
  try {
    const h = createHash("sha256");
    const buf = Buffer.alloc(1024 * 1024);
    let pos = 0;
    while (pos < r.size) {
      const n = Math.min(buf.length, r.size - pos);
      const { bytesRead } = await fh.read(buf, 0, n, r.offset + pos);
      if (bytesRead === 0) break;
      h.update(buf.subarray(0, bytesRead));
      pos += bytesRead;
    }
    return h.digest("hex");
  } finally {
    await fh.close();
  }
}

/** Hashes of the three regions a fault must not touch (or may only touch as allowed). */
export interface DiskHashes {
  A: string;
  B: string;
  esp: string;
}

export async function diskHashes(d: DiskFixture): Promise<DiskHashes> {
  const [A, B, esp] = await Promise.all([
    sha256Range(d.path, d.slots.A),
    sha256Range(d.path, d.slots.B),
    sha256Range(d.path, d.esp),
  ]);
  return { A, B, esp };
}

// ---------------------------------------------------------------- disks

/** The disk of a second update (test/helpers/fixtures.ts). */
export { secondUpdateDisk } from "../helpers/fixtures.ts";

// ---------------------------------------------------------------- guarantees

export async function readBootState(diskPath: string): Promise<BootState> {
  const disk = await BootDisk.open(diskPath, { readOnly: true });
  try {
    return await disk.readState();
  } finally {
    await disk.close();
  }
}

/** Does slot `x`'s partition hold the image the boot state names (dm-verity against its root hash)? */
export async function slotVerifies(
  d: DiskFixture,
  boot: BootState,
  x: SlotName,
): Promise<string | null> {
  const s = boot.slots[x];
  const v = parseSlotVerity(s.verity);
  if (!s.rootHash || !v) return `slot ${x} has no root hash or verity parameters`;
  const part = d.slots[x];
  try {
    await verifyVerity({
      dataPath: d.path,
      dataOffset: part.offset,
      dataSize: v.dataBlocks * 4096,
      hashPath: d.path,
      hashOffset: part.offset + (v.hashStartBlock - 1) * 4096,
      salt: Buffer.from(v.salt, "hex"),
      rootHash: s.rootHash,
    });
    return null;
  } catch (err) {
    return `slot ${x} does not verify against ${s.rootHash}: ${(err as Error).message}`;
  }
}

export interface GuaranteeInput {
  disk: DiskFixture;
  /** The slot that was running when the fault hit, and its bytes' sha256 from before. */
  booted: SlotName;
  bootedSha256: string;
  /** The state directory of the agent (state.json may be absent). */
  stateDir: string;
}

export interface GuaranteeReport {
  violations: string[];
  boot: BootState | null;
  next: SlotName | null;
}

/**
 * Every guarantee after a fault (README.md of this folder, "Guarantees"):
 * 1. the booted slot's bytes are unchanged;
 * 2. the boot state parses, GRUB picks a slot now, and that slot is good or on
 *    trial (tries > 0); some slot is good (the fallback of a trial);
 * 3. every slot GRUB could boot (good, or tries > 0) verifies against its root
 *    hash: a half-written slot is never bootable;
 * 4. state.json, if present, is JSON that validates.
 */
export async function checkGuarantees(g: GuaranteeInput): Promise<GuaranteeReport> {
  const violations: string[] = [];
  const now = await sha256Range(g.disk.path, g.disk.slots[g.booted]);
  if (now !== g.bootedSha256) violations.push(`booted slot ${g.booted}'s bytes changed`);
  let boot: BootState | null = null;
  try {
    boot = await readBootState(g.disk.path);
  } catch (err) {
    violations.push(`boot state does not parse: ${(err as Error).message}`);
  }
  let next: SlotName | null = null;
  if (boot) {
    next = nextBootSlot(boot);
    if (next === null) violations.push("no bootable slot");
    if (!SLOT_NAMES.some((x) => boot?.slots[x].good)) violations.push("no slot is good");
    for (const x of SLOT_NAMES) {
      const s = boot.slots[x];
      if (!s.good && s.tries === 0) continue;
      const why = await slotVerifies(g.disk, boot, x);
      if (why) violations.push(`bootable ${why}`);
    }
  }
  let text: string | null = null;
  try {
    text = await readFile(join(g.stateDir, "state.json"), "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT")
      violations.push(`state.json unreadable: ${(err as Error).message}`);
  }
  if (text !== null) {
    try {
      const problems = validateState(JSON.parse(text));
      if (problems.length) violations.push(`state.json invalid: ${problems.join("; ")}`);
    } catch (err) {
      violations.push(`state.json is not JSON: ${(err as Error).message}`);
    }
  }
  return { violations, boot, next };
}

/** Temp files of the state file left by a killed process (a kill inside a state write). */
export async function stateTemps(stateDir: string): Promise<string[]> {
  try {
    return (await readdir(stateDir)).filter((n) => n.startsWith("state.json.tmp-"));
  } catch {
    return [];
  }
}

// ---------------------------------------------------------------- the real binary

export interface LogLine {
  level?: number;
  msg?: string;
  step?: string;
  /** The raw text, for lines that are not JSON (the CLI's `abforge: ...` error line). */
  raw: string;
  [k: string]: unknown;
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** `abforge ARGS` as a child process with JSON logs, line by line. */
export class AgentProcess {
  readonly child: ChildProcess;
  readonly lines: LogLine[] = [];
  stdout = "";
  stderr = "";
  readonly exited: Promise<Exit>;
  /** Date.now() of the last line (or of the start). */
  lastLineAt = Date.now();
  #done = false;
  #waiters: { re: RegExp; from: number; resolve: (l: LogLine) => void }[] = [];
  #listeners: ((l: LogLine) => void)[] = [];

  constructor(args: readonly string[], env: NodeJS.ProcessEnv = {}) {
    this.child = spawn(ABFORGE, args, {
      env: { ...process.env, ABFORGE_LOG_FORMAT: "json", ABFORGE_LOG_LEVEL: "debug", ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let partial = "";
    this.child.stdout?.on("data", (d) => {
      this.stdout += d;
    });
    this.child.stderr?.on("data", (d) => {
      this.stderr += d;
      partial += d;
      const parts = partial.split("\n");
      partial = parts.pop() ?? "";
      for (const raw of parts) if (raw.trim()) this.#line(raw);
    });
    this.exited = new Promise((resolve, reject) => {
      this.child.on("error", reject);
      this.child.on("close", (code, signal) => {
        if (partial.trim()) this.#line(partial);
        this.#done = true;
        for (const w of this.#waiters) w.resolve({ raw: "", msg: "(exited)" });
        this.#waiters = [];
        resolve({ code, signal });
      });
    });
  }

  #line(raw: string): void {
    let l: LogLine;
    try {
      l = { ...(JSON.parse(raw) as object), raw } as LogLine;
    } catch {
      l = { raw, msg: raw };
    }
    this.lines.push(l);
    this.lastLineAt = Date.now();
    for (const f of this.#listeners) f(l);
    const i = this.lines.length - 1;
    this.#waiters = this.#waiters.filter((w) => {
      if (i >= w.from && w.re.test(l.msg ?? "")) {
        w.resolve(l);
        return false;
      }
      return true;
    });
  }

  get alive(): boolean {
    return !this.#done && this.child.exitCode === null && this.child.signalCode === null;
  }

  onLine(f: (l: LogLine) => void): void {
    this.#listeners.push(f);
  }

  /** The first line (from index `from`) whose msg matches; resolves with msg "(exited)" if none comes. */
  waitLine(re: RegExp, from = 0): Promise<LogLine> {
    const hit = this.lines.slice(from).find((l) => re.test(l.msg ?? ""));
    if (hit) return Promise.resolve(hit);
    if (this.#done) return Promise.resolve({ raw: "", msg: "(exited)" });
    return new Promise((resolve) => this.#waiters.push({ re, from, resolve }));
  }

  /** kill -9, if still running. */
  kill(): void {
    if (this.alive) this.child.kill("SIGKILL");
  }

  /** The steps the process logged (`step N/9: name`), in order. */
  steps(): string[] {
    return this.lines.filter((l) => typeof l.step === "string").map((l) => l.step as string);
  }

  /**
   * The CLI's error (`abforge: ...`), if any, with the lines that continue it
   * (a spec error lists one problem per line), joined by newlines.
   */
  errorLine(): string | undefined {
    const i = this.lines.findIndex((l) => l.raw.startsWith("abforge: "));
    if (i < 0) return undefined;
    const out = [this.lines[i]?.raw ?? ""];
    for (const l of this.lines.slice(i + 1)) {
      if (l.level !== undefined) break;
      out.push(l.raw);
    }
    return out.join("\n");
  }
}

/** Run to completion. */
export async function runAbforge(
  args: readonly string[],
  env: NodeJS.ProcessEnv = {},
): Promise<{ code: number; stdout: string; stderr: string; proc: AgentProcess }> {
  const proc = new AgentProcess(args, env);
  const e = await proc.exited;
  return { code: e.code ?? 128, stdout: proc.stdout, stderr: proc.stderr, proc };
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

// ---------------------------------------------------------------- a proxy that stops at a byte

/**
 * A proxy in front of a real repository server. Requests go through
 * unchanged (Range included). While `stallAt` is set, the body of a bundle
 * response is forwarded up to that absolute byte offset of the file and the
 * connection is then held open without another byte.
 */
export class StallProxy {
  readonly server: http.Server;
  /** Absolute offset in the bundle file where forwarding stops; null = pass everything. */
  stallAt: number | null = null;
  /** Absolute bytes of the bundle forwarded by the current (last) response. */
  forwardedTo = 0;
  /** Bundle responses started (reset by the tests). */
  bundleResponses = 0;
  requests: { path: string; range: string | undefined; at: number }[] = [];
  readonly #upstream: URL;
  readonly #open = new Set<http.ClientRequest>();

  constructor(upstream: string) {
    this.#upstream = new URL(upstream);
    this.server = http.createServer((req, res) => this.#handle(req, res));
  }

  async listen(): Promise<string> {
    await new Promise<void>((r) => this.server.listen(0, "127.0.0.1", r));
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}/`;
  }

  async close(): Promise<void> {
    for (const r of this.#open) r.destroy();
    this.server.closeAllConnections();
    await new Promise<void>((r) => this.server.close(() => r()));
  }

  #handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const url = req.url ?? "/";
    this.requests.push({ path: url, range: req.headers.range, at: Date.now() });
    const headers = { ...req.headers, host: this.#upstream.host };
    const up = http.request(new URL(url, this.#upstream), { method: req.method, headers }, (ur) => {
      res.writeHead(ur.statusCode ?? 502, ur.headers);
      const isBundle = url.includes("/bundles/");
      if (isBundle) this.bundleResponses += 1;
      // where this body starts in the file
      const cr = /bytes (\d+)-/.exec(String(ur.headers["content-range"] ?? ""));
      let pos = ur.statusCode === 206 && cr ? Number(cr[1]) : 0;
      if (isBundle) this.forwardedTo = pos;
      ur.on("data", (chunk: Buffer) => {
        let piece = chunk;
        if (isBundle && this.stallAt !== null) {
          const allowed = Math.max(0, this.stallAt - pos);
          if (allowed < piece.length) {
            piece = piece.subarray(0, allowed);
            ur.pause(); // never resumed: the connection stays open, silent
          }
        }
        if (piece.length > 0) {
          pos += piece.length;
          if (isBundle) this.forwardedTo = pos;
          if (!res.write(piece)) {
            ur.pause();
            res.once("drain", () => {
              if (this.stallAt === null || pos < this.stallAt || !isBundle) ur.resume();
            });
          }
        }
      });
      ur.on("end", () => res.end());
      ur.on("error", () => res.destroy());
    });
    this.#open.add(up);
    up.on("close", () => this.#open.delete(up));
    up.on("error", () => res.destroy());
    res.on("close", () => up.destroy());
    req.pipe(up);
  }
}

// ---------------------------------------------------------------- tar, by hand

export interface TarEntryOptions {
  /** Typeflag character: "0" file (default), "1" hard link, "2" symlink, "3" char dev, "5" dir, "x" pax, ... */
  type?: string;
  linkname?: string;
  mode?: number;
  /** The size written in the header, if it should lie about the data. */
  headerSize?: number;
  devmajor?: number;
  devminor?: number;
  /** Override the magic (default "ustar\0" "00"). */
  magic?: string;
}

function octal(n: number, width: number): string {
  return `${n.toString(8).padStart(width - 1, "0")}\0`;
}

/** One 512-byte ustar header (the fields src/bundle/README.md lists), checksum computed. */
export function tarHeader(name: string, size: number, o: TarEntryOptions = {}): Buffer {
  const h = Buffer.alloc(512);
  h.write(name, 0, 100, "utf8");
  h.write(octal(o.mode ?? 0o644, 8), 100, "ascii");
  h.write(octal(0, 8), 108, "ascii");
  h.write(octal(0, 8), 116, "ascii");
  h.write(`${(o.headerSize ?? size).toString(8).padStart(11, "0")} `, 124, "ascii");
  h.write(octal(1777636800, 12), 136, "ascii");
  h.write(o.type ?? "0", 156, "ascii");
  if (o.linkname) h.write(o.linkname, 157, 100, "utf8");
  h.write(o.magic ?? "ustar\u000000", 257, "binary");
  h.write(octal(o.devmajor ?? 0, 8), 329, "ascii");
  h.write(octal(o.devminor ?? 0, 8), 337, "ascii");
  fixTarChecksum(h);
  return h;
}

/** Recompute the checksum of the header at `offset` (after editing a field). */
export function fixTarChecksum(b: Buffer, offset = 0): void {
  b.fill(0x20, offset + 148, offset + 156);
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += b[offset + i] as number;
  b.write(`${sum.toString(8).padStart(6, "0")}\0 `, offset + 148, "ascii");
}

/** Header + data + zero padding to 512. */
export function tarEntry(name: string, data: Uint8Array, o: TarEntryOptions = {}): Buffer {
  const pad = (512 - (data.length % 512)) % 512;
  return Buffer.concat([tarHeader(name, data.length, o), Buffer.from(data), Buffer.alloc(pad)]);
}

export const TAR_END = Buffer.alloc(1024);

export interface BundleParts {
  bytes: Buffer;
  manifest: Buffer;
  sig: Buffer;
  slot: Buffer;
  /** Length of manifest.json (4096k + 2048). */
  M: number;
  slotOffset: number;
}

/** A real bundle taken apart along its fixed layout (src/bundle/README.md, "Offsets"). */
export async function bundleParts(path: string): Promise<BundleParts> {
  const bytes = await readFile(path);
  const M = Number.parseInt(bytes.subarray(124, 135).toString("ascii"), 8);
  const slotSize = Number.parseInt(
    bytes.subarray(1536 + M + 124, 1536 + M + 135).toString("ascii"),
    8,
  );
  const slotOffset = 2048 + M;
  return {
    bytes,
    manifest: bytes.subarray(512, 512 + M),
    sig: bytes.subarray(1024 + M, 1024 + M + 64),
    slot: bytes.subarray(slotOffset, slotOffset + slotSize),
    M,
    slotOffset,
  };
}

/** Is `err` one of ours (a BaseError subclass with a code)? */
export function isTypedError(err: unknown): boolean {
  return isBaseError(err) && typeof err.code === "string" && err.code.length > 0;
}

// ---------------------------------------------------------------- case runners

/**
 * Run every case of a hostile suite, two at a time (each starts the real
 * binary on its own files), and return the failures as `name: message`
 * (the message cut to `messageChars`), so one bad case does not hide the rest.
 */
export async function runCases<C extends { name: string }>(
  cases: readonly C[],
  run: (c: C, index: number) => Promise<void>,
  o: { parallel?: number; messageChars?: number } = {},
): Promise<string[]> {
  const failures: string[] = [];
  let next = 0;
  const worker = async () => {
    while (next < cases.length) {
      const i = next++;
      const c = cases[i] as C;
      try {
        await run(c, i);
      } catch (err) {
        failures.push(`${c.name}: ${(err as Error).message.slice(0, o.messageChars ?? 800)}`);
      }
    }
  };
  await Promise.all(Array.from({ length: o.parallel ?? 2 }, worker));
  return failures;
}
