/**
 * Installing one bundle into the inactive slot (README.md, "Install
 * procedure"): a plan of named steps run in order, one log line per step.
 * The target slot is marked unbootable before a byte of it is written and
 * activated only after the written bytes verified; the booted slot is never
 * the target.
 */
import { createHash, type Hash, type KeyObject } from "node:crypto";
import { createReadStream } from "node:fs";
import { type FileHandle, open } from "node:fs/promises";
import type { Readable } from "node:stream";
import {
  activateSlot,
  type BootState,
  formatSlotVerity,
  markUnbootable,
} from "../bootloader/index.ts";
import {
  BundleReader,
  CHUNK_SIZE,
  chunkCount,
  encodeManifest,
  type Manifest,
} from "../bundle/index.ts";
import type { Clock, Timer } from "../clock.ts";
import { isBaseError, ToolError } from "../errors.ts";
import type { Logger } from "../log.ts";
import { verifyVerity } from "../verity/index.ts";
import { errText, type SlotName } from "./config.ts";
import { UpdaterError, type UpdaterErrorCode } from "./errors.ts";
import type { ByteRange } from "./machine.ts";
import { decideUpdate, installBlocker, otherSlot } from "./policy.ts";
import type { AgentState, InstallProgress } from "./state-file.ts";

/** Where a bundle's bytes come from: a local file or a URL. */
export interface BundleSource {
  /** Path or URL, for logs and the state file. */
  readonly location: string;
  /**
   * The bundle's bytes from `offset` to its end. The stream's buffers are the
   * installer's once read: a buffer that spans its whole ArrayBuffer is
   * detached after its bytes are copied (BundleReader `releaseSourceBuffers`),
   * so it must not be shared with anything else.
   */
  open(offset: number, signal?: AbortSignal): Readable;
}

export function fileSource(path: string): BundleSource {
  return {
    location: path,
    open: (offset, signal) =>
      createReadStream(path, { start: offset, ...(signal ? { signal } : {}) }),
  };
}

/** The boot state on the boot disk: read it, and write it in one commit. */
export interface BootStore {
  readState(): Promise<BootState>;
  writeState(s: BootState): Promise<void>;
}

/** The agent's state, and a way to change it durably. */
export interface StateHandle {
  readonly current: AgentState;
  update(change: (s: AgentState) => AgentState): Promise<void>;
}

export interface InstallRequest {
  source: BundleSource;
  /** What the channel index promised (absent for `install FILE|URL`). */
  expected?: { version: string; slotDataOffset: number; bundleSha256: string };
  /** Stops the install (UPDATE_ABORTED); progress so far is kept for a resume. */
  signal?: AbortSignal;
}

export interface InstallContext {
  log: Logger;
  /** Time of the records, and the progress recorder's timer (src/clock.ts). */
  clock: Clock;
  boot: BootStore;
  state: StateHandle;
  diskPath: string;
  slots: Record<SlotName, ByteRange>;
  booted: SlotName;
  trustedKeys: readonly KeyObject[];
  compatible: string;
  tries: number;
  /** Called after each chunk is written (for progress displays and tests); the state file records it within PROGRESS_SAVE_MS. */
  onChunk?: (verifiedChunks: number, chunksTotal: number) => void;
}

export type InstallResult =
  | {
      outcome: "installed";
      slot: SlotName;
      version: string;
      /** Chunk the write started from (0 = a fresh download, > 0 = resumed). */
      resumedFromChunk: number;
      bytesWritten: number;
    }
  | { outcome: "up-to-date"; version: string }
  /** Already installed and activated; it runs after the next reboot. */
  | { outcome: "pending-reboot"; slot: SlotName; version: string };

interface Run {
  req: InstallRequest;
  /** The stream the reader opened on (from byte 0); destroyed when the plan stops early. */
  head?: Readable;
  reader?: BundleReader;
  manifest?: Manifest;
  manifestSha256?: string;
  slotOffset?: number;
  target: SlotName;
  resumedFromChunk: number;
  bytesWritten: number;
  wholeHash?: Hash;
  result?: InstallResult;
}

interface Step {
  name: string;
  run(r: Run): Promise<void>;
}

/**
 * Install `req.source` into the slot that is not booted (README.md,
 * "Install procedure", steps 1-9). Throws a typed error on any refusal or
 * failure; what was written so far is recorded for a resume.
 */
export async function installBundle(
  ctx: InstallContext,
  req: InstallRequest,
): Promise<InstallResult> {
  const target = otherSlot(ctx.booted);
  const r: Run = { req, target, resumedFromChunk: 0, bytesWritten: 0 };
  const plan = installPlan(ctx);
  const log = ctx.log.child({ source: req.source.location, slot: target });
  try {
    for (const [i, step] of plan.entries()) {
      if (req.signal?.aborted) throw aborted(req.signal, step.name);
      log.info({ step: step.name }, `step ${i + 1}/${plan.length}: ${step.name}`);
      await step.run(r);
      if (r.result) {
        r.head?.destroy();
        return r.result;
      }
    }
  } catch (err) {
    r.head?.destroy();
    if (req.signal?.aborted && !(isBaseError(err) && err.code === "UPDATE_ABORTED"))
      throw aborted(req.signal, "install", err);
    throw err;
  }
  return r.result as InstallResult;
}

function installPlan(ctx: InstallContext): Step[] {
  return [
    // 1. the manifest and its signature, before anything else
    {
      name: "open-bundle",
      async run(r) {
        r.head = r.req.source.open(0, r.req.signal);
        r.reader = new BundleReader(r.head, {
          trustedKeys: ctx.trustedKeys,
          name: r.req.source.location,
          // a BundleSource's streams allocate a buffer per read (HTTP body, file)
          releaseSourceBuffers: true,
        });
        r.manifest = await r.reader.open();
        r.slotOffset = r.reader.layout.slotOffset;
        r.manifestSha256 = sha256(encodeManifest(r.manifest));
        ctx.log.info(
          { version: r.manifest.version, signer: r.reader.signerKeyId },
          `bundle ${r.manifest.name} ${r.manifest.version} is signed by trusted key ${r.reader.signerKeyId}`,
        );
      },
    },
    // 2. compatible, version, bad versions, the index's promise, the fallback
    {
      name: "check-update",
      async run(r) {
        const m = r.manifest as Manifest;
        const e = r.req.expected;
        if (e && (e.version !== m.version || e.slotDataOffset !== r.slotOffset))
          refuse(
            "UPDATE_VERIFY_FAILED",
            `the bundle is ${m.version} with its slot image at byte ${r.slotOffset}; the channel index promised ${e.version} at byte ${e.slotDataOffset}`,
          );
        const boot = await ctx.boot.readState();
        const decision = decideUpdate({
          bootedVersion: boot.slots[ctx.booted].version,
          compatible: ctx.compatible,
          candidate: { version: m.version, compatible: m.compatible },
          badVersions: ctx.state.current.badVersions,
        });
        if (decision.action === "refuse") refuse(decision.code, decision.message);
        if (decision.action === "none") {
          if (decision.reason === "bad-version") refuse("UPDATE_BAD_VERSION", decision.message);
          r.result = { outcome: "up-to-date", version: m.version };
          return;
        }
        const pending = ctx.state.current.pending;
        const t = boot.slots[r.target];
        if (
          pending?.slot === r.target &&
          pending.rootHash === m.verity.rootHash &&
          t.rootHash === m.verity.rootHash &&
          !t.good &&
          t.tries > 0
        ) {
          r.result = { outcome: "pending-reboot", slot: r.target, version: m.version };
          return;
        }
        const blocker = installBlocker(boot, ctx.booted);
        if (blocker)
          refuse("UPDATE_REFUSED", `cannot install ${m.version} into slot ${r.target}: ${blocker}`);
      },
    },
    // 3. the slot image must fit the inactive partition
    {
      name: "check-size",
      async run(r) {
        const m = r.manifest as Manifest;
        const part = ctx.slots[r.target];
        const treeEnd = m.verity.hashOffset + m.verity.hashAreaSize;
        if (m.slotImage.size > part.size || treeEnd > part.size)
          refuse(
            "UPDATE_TOO_LARGE",
            `slot image of ${m.version} is ${Math.max(m.slotImage.size, treeEnd)} bytes; slot ${r.target}'s partition holds ${part.size}`,
            { size: m.slotImage.size, partitionSize: part.size },
          );
      },
    },
    // 4. GRUB must not boot the slot while it is half written: one boot-state write
    {
      name: "mark-unbootable",
      async run(r) {
        const boot = await ctx.boot.readState();
        const next = markUnbootable(boot, r.target);
        if (JSON.stringify(next) !== JSON.stringify(boot)) await ctx.boot.writeState(next);
      },
    },
    // 5. stream the slot image into the partition, each chunk verified before it is written
    {
      name: "write-slot",
      async run(r) {
        await writeSlot(ctx, r);
      },
    },
    // 6. the whole image's sha256
    {
      name: "check-sha256",
      async run(r) {
        const m = r.manifest as Manifest;
        // Streamed from chunk 0: the bundle reader checked the whole image's
        // sha256 before it let the last chunk out (no second pass here).
        if (!r.wholeHash) return;
        const actual = r.wholeHash.digest("hex");
        if (actual !== m.slotImage.sha256)
          throw await forgetProgress(
            ctx,
            new UpdaterError(
              "UPDATE_VERIFY_FAILED",
              `slot ${r.target} on ${ctx.diskPath}: written image has sha256 ${actual}, the manifest says ${m.slotImage.sha256}`,
              { details: { expected: m.slotImage.sha256, actual } },
            ),
          );
      },
    },
    // 7. flush the written slot to the device before it is read back or GRUB points at it
    {
      name: "sync",
      async run() {
        let fh: FileHandle | undefined;
        try {
          fh = await open(ctx.diskPath, "r+");
          await fh.datasync();
        } catch (cause) {
          throw ioError(`fdatasync ${ctx.diskPath}`, cause);
        } finally {
          await fh?.close();
        }
      },
    },
    // 8. read the slot back and check its verity tree against the signed root hash
    {
      name: "verify-verity",
      async run(r) {
        const m = r.manifest as Manifest;
        const part = ctx.slots[r.target];
        try {
          const v = await verifyVerity({
            dataPath: ctx.diskPath,
            dataOffset: part.offset,
            dataSize: m.verity.dataBlocks * m.verity.dataBlockSize,
            hashPath: ctx.diskPath,
            hashOffset: part.offset + m.verity.hashOffset,
            hashAlgorithm: m.verity.hashAlgorithm,
            dataBlockSize: m.verity.dataBlockSize,
            hashBlockSize: m.verity.hashBlockSize,
            salt: Buffer.from(m.verity.salt, "hex"),
            superblock: m.verity.superblock,
            rootHash: m.verity.rootHash,
            // On the agent's own thread: a worker thread is a second V8 heap
            // (~10 MiB more at the install's peak) to save ~0.1 s per 256 MiB.
            threads: 1,
          });
          if (v.dataBlocks !== m.verity.dataBlocks || v.salt !== m.verity.salt)
            throw new UpdaterError(
              "UPDATE_VERIFY_FAILED",
              `slot ${r.target}: verity superblock says ${v.dataBlocks} blocks, salt ${v.salt}; the manifest says ${m.verity.dataBlocks}, ${m.verity.salt}`,
            );
        } catch (cause) {
          throw await forgetProgress(
            ctx,
            cause instanceof UpdaterError
              ? cause
              : new UpdaterError(
                  "UPDATE_VERIFY_FAILED",
                  `slot ${r.target} on ${ctx.diskPath} does not verify against root hash ${m.verity.rootHash}: ${errText(cause)}`,
                  { cause, details: { slot: r.target, rootHash: m.verity.rootHash } },
                ),
          );
        }
      },
    },
    // 9. only now: boot the new slot next, on trial
    {
      name: "activate",
      async run(r) {
        const m = r.manifest as Manifest;
        const boot = await ctx.boot.readState();
        const next = activateSlot(boot, r.target, {
          tries: ctx.tries,
          rootHash: m.verity.rootHash,
          verity: formatSlotVerity({
            dataBlocks: m.verity.dataBlocks,
            hashStartBlock: m.verity.hashStartBlock,
            salt: m.verity.salt,
          }),
          version: m.version,
        });
        await ctx.boot.writeState(next);
        const at = ctx.clock.now().toISOString();
        await ctx.state.update((s) => ({
          ...s,
          progress: null,
          pending: {
            slot: r.target,
            version: m.version,
            rootHash: m.verity.rootHash,
            installedAt: at,
          },
        }));
        ctx.log.info(
          { version: m.version, slot: r.target, tries: ctx.tries },
          `installed ${m.version} into slot ${r.target}; it boots next (${ctx.tries} tries)`,
        );
        r.result = {
          outcome: "installed",
          slot: r.target,
          version: m.version,
          resumedFromChunk: r.resumedFromChunk,
          bytesWritten: r.bytesWritten,
        };
      },
    },
  ];
}

/** Step 5 (README.md, "Resume"). */
async function writeSlot(ctx: InstallContext, r: Run): Promise<void> {
  const m = r.manifest as Manifest;
  const reader = r.reader as BundleReader;
  const part = ctx.slots[r.target];
  const total = chunkCount(m.slotImage.size);
  const now = () => ctx.clock.now().toISOString();
  let fh: FileHandle;
  try {
    fh = await open(ctx.diskPath, "r+");
  } catch (cause) {
    throw ioError(`open ${ctx.diskPath} for writing`, cause);
  }
  try {
    // 5a. what a previous run wrote: the state file's hint, re-checked against the partition
    const prev = ctx.state.current.progress;
    const sameImage =
      prev !== null &&
      prev.slot === r.target &&
      prev.manifestSha256 === r.manifestSha256 &&
      prev.chunksTotal === total;
    const hinted = sameImage ? Math.min(prev.verifiedChunks, total) : 0;
    // Only a resumed write hashes the whole image here (the chunks re-read
    // from the slot, then the streamed ones); from chunk 0, the reader does.
    const whole = hinted > 0 ? createHash("sha256") : undefined;
    let from = 0;
    while (from < hinted) {
      const len = Math.min(CHUNK_SIZE, m.slotImage.size - from * CHUNK_SIZE);
      const buf = Buffer.alloc(len);
      await readFull(fh, buf, part.offset + from * CHUNK_SIZE, ctx.diskPath);
      if (sha256(buf) !== m.slotImage.chunks[from]) {
        ctx.log.warn(
          { chunk: from },
          `chunk ${from} in slot ${r.target} does not match; rewriting from there`,
        );
        break;
      }
      whole?.update(buf);
      from += 1;
    }
    r.resumedFromChunk = from;
    r.wholeHash = from > 0 ? whole : undefined;
    const progress: InstallProgress = {
      slot: r.target,
      version: m.version,
      source: r.req.source.location,
      bundleSha256: r.req.expected?.bundleSha256 ?? null,
      manifestSha256: r.manifestSha256 as string,
      slotImageSha256: m.slotImage.sha256,
      slotDataOffset: r.slotOffset as number,
      slotImageSize: m.slotImage.size,
      chunkSize: CHUNK_SIZE,
      chunksTotal: total,
      verifiedChunks: from,
      startedAt: sameImage ? prev.startedAt : now(),
      updatedAt: now(),
    };
    await ctx.state.update((s) => ({ ...s, progress }));
    if (from > 0)
      ctx.log.info(
        { version: m.version, chunk: from, of: total },
        `resuming ${m.version} at chunk ${from} of ${total} (chunks before it verified in slot ${r.target})`,
      );
    // Every chunk is in the slot already (a run stopped after the write, in steps 6-9):
    // nothing left to fetch; a Range request from past the slot image would fail.
    if (from === total) return;
    ctx.log.info(
      { version: m.version, slot: r.target, bytes: m.slotImage.size },
      `downloading ${m.version} into slot ${r.target} (${m.slotImage.size} bytes)`,
    );
    // 5b. the rest of the slot image, from the first chunk not verified. The
    // write of chunk n runs while chunk n+1 is received and hashed: at most
    // two chunks are held, and a chunk is written only after its hash matched.
    const chunks =
      from === 0
        ? reader.slotChunks()
        : reader.slotChunks({
            fromChunk: from,
            source: r.req.source.open((r.slotOffset as number) + from * CHUNK_SIZE, r.req.signal),
          });
    let decile = Math.floor((from * 10) / Math.max(1, total));
    const recorder = new ProgressRecorder(ctx, progress, () => fh.datasync());
    const flusher = new FlushBehind(async () => {
      try {
        await fh.datasync();
      } catch (cause) {
        throw ioError(`fdatasync ${ctx.diskPath}`, cause);
      }
    });
    let writing: Promise<void> | undefined;
    const written = async (done: number) => {
      await recorder.advance(done, done === total);
      ctx.onChunk?.(done, total);
      const d = Math.floor((done * 10) / total);
      if (d > decile) {
        decile = d;
        ctx.log.info(
          { version: m.version, percent: d * 10, chunk: done, of: total },
          `downloading ${m.version}: ${d * 10}%`,
        );
      }
    };
    try {
      for await (const c of chunks) {
        await writing;
        if (r.req.signal?.aborted) throw aborted(r.req.signal, "write-slot");
        r.wholeHash?.update(c.bytes);
        writing = writeFull(fh, c.bytes, part.offset + c.index * CHUNK_SIZE, ctx.diskPath).then(
          () => {
            c.release();
            r.bytesWritten += c.bytes.length;
            flusher.wrote(c.bytes.length);
            return written(c.index + 1);
          },
        );
        // awaited above or below; this keeps it from counting as unhandled meanwhile
        writing.catch(() => {});
      }
      await writing;
      await reader.finish();
    } catch (err) {
      // A write still in flight ends before the disk is closed (it records itself).
      await writing?.catch(() => {});
      // What was written is recorded for the resume, whatever stopped the write.
      await recorder
        .flush()
        .catch((e: unknown) =>
          ctx.log.warn(
            { err: e },
            `cannot record the progress of ${m.version} (chunk ${progress.verifiedChunks}): ${errText(e)}`,
          ),
        );
      if (r.req.signal?.aborted) throw aborted(r.req.signal, "write-slot", err);
      if (isBaseError(err) && (err.code === "BUNDLE_BAD_HASH" || err.code === "BUNDLE_MALFORMED"))
        throw new UpdaterError(
          "UPDATE_VERIFY_FAILED",
          `${m.version} from ${r.req.source.location}: ${err.message}; nothing of that chunk was written`,
          { cause: err, details: { chunk: progress.verifiedChunks } },
        );
      if (isBaseError(err) && err.code.startsWith("UPDATE_")) throw err;
      if (isBaseError(err) && (err.code === "IO_ERROR" || err.code === "DISK_FULL")) throw err;
      throw new UpdaterError(
        "UPDATE_DOWNLOAD_FAILED",
        `download of ${m.version} from ${r.req.source.location} stopped at chunk ${progress.verifiedChunks} of ${total}: ${errText(err)}; the next attempt resumes there`,
        { cause: err, details: { chunk: progress.verifiedChunks, of: total } },
      );
    } finally {
      await flusher.stop();
      await recorder.stop();
    }
  } finally {
    await fh.close();
  }
}

/**
 * How often step 5 replaces the state file (README.md, "Install procedure",
 * step 5): at most once per PROGRESS_SAVE_MS while chunks arrive, so a fast
 * download does not wait for an fsync per chunk; a resume re-reads and
 * re-hashes the written chunks anyway, so a record that lags only costs a
 * re-download of what came after it. Before each save the slot's written
 * bytes are synced (fdatasync), so a record never claims chunks that a power
 * loss could still take back: the resume after a reset starts where it says.
 */
export const PROGRESS_SAVE_MS = 1000;

/**
 * Records `progress.verifiedChunks` in the state file: at once when the last
 * save is PROGRESS_SAVE_MS old, else by a timer that fires PROGRESS_SAVE_MS
 * after the last save (so a download that pauses is recorded within that
 * time), at the last chunk, and on `flush()` (the write stopped). Saves are
 * serialized; a failed background save is thrown by the next call.
 */
class ProgressRecorder {
  readonly #ctx: InstallContext;
  readonly #progress: InstallProgress;
  #saved: number;
  #savedAt: number;
  #chain: Promise<void> = Promise.resolve();
  #timer: Timer | undefined;
  #failed: unknown;
  readonly #syncSlot: () => Promise<void>;

  constructor(ctx: InstallContext, progress: InstallProgress, syncSlot: () => Promise<void>) {
    this.#ctx = ctx;
    this.#progress = progress;
    this.#syncSlot = syncSlot;
    this.#saved = progress.verifiedChunks;
    this.#savedAt = ctx.clock.monotonicMs();
  }

  /** Chunks 0..done-1 are written; `last`: the final chunk (saved at once). */
  async advance(done: number, last: boolean): Promise<void> {
    if (this.#failed) throw this.#failed;
    this.#progress.verifiedChunks = done;
    const clock = this.#ctx.clock;
    if (last || clock.monotonicMs() - this.#savedAt >= PROGRESS_SAVE_MS) await this.flush();
    else
      this.#timer ??= clock.timer(
        Math.max(0, this.#savedAt + PROGRESS_SAVE_MS - clock.monotonicMs()),
        () => {
          this.#timer = undefined;
          this.flush().catch((err: unknown) => {
            this.#failed ??= err;
          });
        },
      );
  }

  /** Save now if chunks were written since the last save. */
  flush(): Promise<void> {
    this.#timer?.cancel();
    this.#timer = undefined;
    // the interval counts from when a save starts: one save begun per PROGRESS_SAVE_MS
    this.#savedAt = this.#ctx.clock.monotonicMs();
    this.#chain = this.#chain.then(async () => {
      const done = this.#progress.verifiedChunks;
      if (done === this.#saved) return;
      this.#progress.updatedAt = this.#ctx.clock.now().toISOString();
      const snapshot = { ...this.#progress, verifiedChunks: done };
      await this.#syncSlot();
      await this.#ctx.state.update((s) => ({ ...s, progress: snapshot }));
      this.#saved = done;
    });
    return this.#chain;
  }

  /** No more saves: cancel the timer and wait for a save in progress (it syncs the disk, still open). */
  async stop(): Promise<void> {
    this.#timer?.cancel();
    this.#timer = undefined;
    await this.#chain.catch(() => {});
  }
}

/**
 * Written bytes between two background flushes of the slot (fdatasync, one at
 * a time, not waited for): the device writes the slot while the rest
 * downloads, so the sync before the progress record, step 7 and the verity
 * read-back do not wait for the whole image at the end, and the page cache
 * never holds more than about this much of the slot unwritten.
 */
export const FLUSH_BEHIND_BYTES = 32 * 1024 * 1024;

/** Starts a background sync after every FLUSH_BEHIND_BYTES written; its failure is thrown by the next call. */
export class FlushBehind {
  readonly #sync: () => Promise<void>;
  #pending = 0;
  #inFlight: Promise<void> | undefined;
  #failed: unknown;

  constructor(sync: () => Promise<void>) {
    this.#sync = sync;
  }

  wrote(bytes: number): void {
    if (this.#failed) throw this.#failed;
    this.#pending += bytes;
    if (this.#pending < FLUSH_BEHIND_BYTES || this.#inFlight) return;
    this.#pending = 0;
    this.#inFlight = this.#sync()
      .catch((err: unknown) => {
        this.#failed ??= err;
      })
      .finally(() => {
        this.#inFlight = undefined;
      });
  }

  /** Wait for a sync in flight (the disk is closed after). */
  async stop(): Promise<void> {
    await this.#inFlight;
  }
}

function refuse(code: UpdaterErrorCode, message: string, details = {}): never {
  throw new UpdaterError(code, message, { details });
}

/** A failed verification means the bytes are wrong: the next attempt starts over. */
async function forgetProgress(ctx: InstallContext, err: UpdaterError): Promise<UpdaterError> {
  await ctx.state.update((s) => ({ ...s, progress: null }));
  return err;
}

function aborted(signal: AbortSignal, step: string, cause?: unknown): UpdaterError {
  return new UpdaterError(
    "UPDATE_ABORTED",
    `install stopped during ${step}: ${errText(signal.reason ?? "aborted")}; it resumes on the next attempt`,
    {
      cause: cause ?? signal.reason,
      details: { step },
    },
  );
}

function sha256(b: Uint8Array): string {
  return createHash("sha256").update(b).digest("hex");
}

async function readFull(
  fh: FileHandle,
  buf: Buffer,
  position: number,
  path: string,
): Promise<void> {
  let done = 0;
  try {
    while (done < buf.length) {
      const { bytesRead } = await fh.read(buf, done, buf.length - done, position + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
  } catch (cause) {
    throw ioError(`read ${path} at byte ${position + done}`, cause);
  }
  buf.fill(0, done);
}

/** `buf` at `position`: one positional write, repeated only after a short write. */
async function writeFull(
  fh: FileHandle,
  buf: Buffer,
  position: number,
  path: string,
): Promise<void> {
  let done = 0;
  try {
    while (done < buf.length) {
      const { bytesWritten } = await fh.write(buf, done, buf.length - done, position + done);
      done += bytesWritten;
    }
  } catch (cause) {
    throw ioError(`write ${path} at byte ${position + done}`, cause);
  }
}

function ioError(what: string, cause: unknown): ToolError {
  const code = (cause as NodeJS.ErrnoException).code;
  return new ToolError(
    code === "ENOSPC" ? "DISK_FULL" : "IO_ERROR",
    `cannot ${what}: ${errText(cause)}`,
    {
      cause,
      details: { errno: code },
    },
  );
}
