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
  BundleError,
  BundleReader,
  CHUNK_SIZE,
  chunkCount,
  type Manifest,
  manifestDigest,
  type VerifiedChunk,
} from "../bundle/index.ts";
import type { Clock, Timer } from "../clock.ts";
import { isBaseError, isBug } from "../errors.ts";
import { ioError, ioStep, isSystemError, readAt, writeAt } from "../fileio.ts";
import type { SlotName } from "../image/index.ts";
import type { Logger } from "../log.ts";
import { verifyVerity } from "../verity/index.ts";
import { errText, UpdaterError, type UpdaterErrorCode } from "./errors.ts";
import type { ByteRange } from "./machine.ts";
import { decideUpdate, installBlocker, otherSlot } from "./policy.ts";
import type { AgentState, EmptySlot, InstallProgress } from "./state-file.ts";

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
  /**
   * What the signed channel index commits to (absent for `install FILE|URL`):
   * checked before the idle slot or the boot state changes (step 2), the
   * whole file's size and sha256 in the same pass as the download (step 6).
   */
  expected?: IndexPromise;
  /** Stops the install (UPDATE_ABORTED); progress so far is kept for a resume. */
  signal?: AbortSignal;
}

/** The channel index's `latest` (src/repo README.md, "Index schema"). */
export interface IndexPromise {
  version: string;
  slotDataOffset: number;
  /** sha256 of the bundle's manifest.json: the release the index names. */
  manifestSha256: string;
  /** Size and sha256 of the whole bundle file. */
  bundleSize: number;
  bundleSha256: string;
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
  /** Size and sha256 of the bundle file as the reader consumes it (only with an index promise). */
  file?: FileDigest;
  /** The boot disk, open for writing from step 3 to the end of step 5. */
  fh?: FileHandle;
  /** The progress record the resume check found (step 3), same slot and image. */
  prev?: InstallProgress;
  /** The verified chunks to write, from chunk `resumedFromChunk` on (step 3). */
  chunks?: AsyncGenerator<VerifiedChunk, void, undefined>;
  /** The first of them, received and verified before the boot state changes (step 3). */
  first?: IteratorResult<VerifiedChunk, void>;
  /** Step 4 marked the target unbootable and empty: a failure from here on is recorded for it. */
  emptied: boolean;
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
  const r: Run = { req, target, resumedFromChunk: 0, bytesWritten: 0, emptied: false };
  const plan = installPlan(ctx);
  const log = ctx.log.child({ source: req.source.location, slot: target });
  try {
    for (const [i, step] of plan.entries()) {
      if (req.signal?.aborted) throw aborted(req.signal, step.name);
      log.info({ step: step.name }, `step ${i + 1}/${plan.length}: ${step.name}`);
      await step.run(r);
      if (r.result) return r.result;
    }
  } catch (caught) {
    const err =
      req.signal?.aborted && !(isBaseError(caught) && caught.code === "UPDATE_ABORTED")
        ? aborted(req.signal, "install", caught)
        : caught;
    if (r.emptied) await recordEmptyFailure(ctx, r, err);
    throw err;
  } finally {
    await r.chunks?.return(undefined).catch(() => {});
    r.head?.destroy();
    await closeDisk(r);
  }
  return r.result as InstallResult;
}

/** Why the target is still empty (README.md, "Empty slot"): the failure that stopped the install. */
async function recordEmptyFailure(ctx: InstallContext, r: Run, err: unknown): Promise<void> {
  const failure = {
    at: ctx.clock.now().toISOString(),
    code: isBaseError(err) ? err.code : "UNEXPECTED",
    message: errText(err),
  };
  await ctx.state
    .update((s) =>
      s.emptySlot?.slot === r.target ? { ...s, emptySlot: { ...s.emptySlot, failure } } : s,
    )
    .catch((e: unknown) =>
      ctx.log.warn(
        { err: e },
        `cannot record why slot ${r.target} is empty in the state file: ${errText(e)}`,
      ),
    );
}

async function closeDisk(r: Run): Promise<void> {
  const fh = r.fh;
  r.fh = undefined;
  await fh?.close();
}

function installPlan(ctx: InstallContext): Step[] {
  return [
    // 1. the manifest and its signature, before anything else
    {
      name: "open-bundle",
      async run(r) {
        r.head = r.req.source.open(0, r.req.signal);
        const file = r.req.expected ? new FileDigest() : undefined;
        r.file = file;
        r.reader = new BundleReader(r.head, {
          trustedKeys: ctx.trustedKeys,
          name: r.req.source.location,
          // a BundleSource's streams allocate a buffer per read (HTTP body, file)
          releaseSourceBuffers: true,
          ...(file ? { onBytes: (b: Uint8Array, at: number) => file.update(b, at) } : {}),
        });
        r.manifest = await r.reader.open();
        r.slotOffset = r.reader.layout.slotOffset;
        r.manifestSha256 = manifestDigest(r.manifest);
        ctx.log.info(
          { version: r.manifest.version, signer: r.reader.signerKeyId },
          `bundle ${r.manifest.name} ${r.manifest.version} is signed by trusted key ${r.reader.signerKeyId}`,
        );
      },
    },
    // 2. the index's promise, compatible, version, bad versions, the fallback, the size
    {
      name: "check-update",
      async run(r) {
        const m = r.manifest as Manifest;
        const e = r.req.expected;
        if (e) checkPromise(e, r);
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
        // the slot image must fit the inactive partition
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
    // 3. where the write starts, and its first chunk received and verified: a bundle
    //    that is bad before its first slot byte costs nothing, not even the fallback
    {
      name: "check-first-chunk",
      async run(r) {
        await firstChunk(ctx, r);
      },
    },
    // 4. GRUB must not boot the slot while it is half written: one boot-state write,
    //    which also empties it (its old image is about to be overwritten)
    {
      name: "mark-unbootable",
      async run(r) {
        const m = r.manifest as Manifest;
        const boot = await ctx.boot.readState();
        const was = boot.slots[r.target];
        const unbooted = markUnbootable(boot, r.target);
        const next: BootState = {
          ...unbooted,
          slots: {
            ...unbooted.slots,
            [r.target]: { ...unbooted.slots[r.target], rootHash: "", verity: "", version: "" },
          },
        };
        if (JSON.stringify(next) !== JSON.stringify(boot)) await ctx.boot.writeState(next);
        r.emptied = true;
        const prevRecord = ctx.state.current.emptySlot;
        const record: EmptySlot = {
          slot: r.target,
          since:
            prevRecord?.slot === r.target && was.rootHash === ""
              ? prevRecord.since
              : ctx.clock.now().toISOString(),
          previousVersion:
            prevRecord?.slot === r.target && was.rootHash === ""
              ? prevRecord.previousVersion
              : was.version,
          version: m.version,
          failure: null,
        };
        await ctx.state.update((s) => ({ ...s, emptySlot: record }));
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
        const e = r.req.expected;
        // the whole bundle file, hashed as the reader consumed it (no second read)
        if (e && r.file) {
          const size = r.file.size;
          const file = r.file.digest();
          if (size !== e.bundleSize || file !== e.bundleSha256)
            throw await forgetProgress(
              ctx,
              new UpdaterError(
                "UPDATE_INDEX_MISMATCH",
                `${r.req.source.location} is ${size} bytes with sha256 ${file}; the signed channel index names ${e.bundleSize} bytes with sha256 ${e.bundleSha256}: not the file the index names; slot ${r.target} is not activated`,
                {
                  details: {
                    size,
                    sha256: file,
                    expectedSize: e.bundleSize,
                    expectedSha256: e.bundleSha256,
                  },
                },
              ),
            );
        }
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
        r.emptied = false;
        const at = ctx.clock.now().toISOString();
        await ctx.state.update((s) => ({
          ...s,
          progress: null,
          emptySlot: null,
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

/**
 * Step 3 (README.md, "Resume"): what a previous run wrote, then the chunk
 * stream from the first chunk not in the slot, and that chunk received and
 * verified. Reads the slot, writes nothing: a failure here leaves the slot's
 * bytes and the boot state as they were.
 */
async function firstChunk(ctx: InstallContext, r: Run): Promise<void> {
  const m = r.manifest as Manifest;
  const reader = r.reader as BundleReader;
  const part = ctx.slots[r.target];
  const total = chunkCount(m.slotImage.size);
  const slotOffset = r.slotOffset as number;
  try {
    r.fh = await open(ctx.diskPath, "r+");
  } catch (cause) {
    throw ioError(`open ${ctx.diskPath} for writing`, cause);
  }
  const fh = r.fh;
  // 3a. what a previous run wrote: the state file's hint, re-checked against the partition
  const prev = ctx.state.current.progress;
  const sameImage =
    prev !== null &&
    prev.slot === r.target &&
    prev.manifestSha256 === r.manifestSha256 &&
    prev.chunksTotal === total;
  if (sameImage) r.prev = prev;
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
    // the bundle file holds these bytes here: its digest goes on without reading them again
    r.file?.update(buf, slotOffset + from * CHUNK_SIZE);
    from += 1;
  }
  r.resumedFromChunk = from;
  r.wholeHash = from > 0 ? whole : undefined;
  if (from > 0)
    ctx.log.info(
      { version: m.version, chunk: from, of: total },
      `resuming ${m.version} at chunk ${from} of ${total} (chunks before it verified in slot ${r.target})`,
    );
  // 3b. the rest of the bundle from the first chunk not verified; with every chunk
  // in the slot already (a run stopped in steps 6-9), only the end-of-archive blocks
  r.chunks =
    from === 0
      ? reader.slotChunks()
      : reader.slotChunks({
          fromChunk: from,
          source: r.req.source.open(
            slotOffset + Math.min(from * CHUNK_SIZE, m.slotImage.size),
            r.req.signal,
          ),
        });
  try {
    r.first = await r.chunks.next();
  } catch (err) {
    if (r.req.signal?.aborted) throw aborted(r.req.signal, "check-first-chunk", err);
    const untouched = `nothing written: slot ${r.target} and the boot state are as they were`;
    if (err instanceof BundleError)
      throw new BundleError(err.code, `${err.message}; ${untouched}`, {
        cause: err,
        details: { ...err.details, chunk: from },
      });
    if (isBaseError(err) && err.code.startsWith("REPO_"))
      throw new UpdaterError(
        "UPDATE_DOWNLOAD_FAILED",
        `download of ${m.version} from ${r.req.source.location} failed in chunk ${from} of ${total}: ${err.message}; ${untouched}`,
        { cause: err, details: { chunk: from, of: total } },
      );
    if (isSystemError(err)) throw ioError(`read ${r.req.source.location}`, err);
    throw err;
  }
}

/** Step 5 (README.md, "Install procedure"): the chunks from step 3 into the partition. */
async function writeSlot(ctx: InstallContext, r: Run): Promise<void> {
  const m = r.manifest as Manifest;
  const reader = r.reader as BundleReader;
  const part = ctx.slots[r.target];
  const total = chunkCount(m.slotImage.size);
  const now = () => ctx.clock.now().toISOString();
  const fh = r.fh as FileHandle;
  const chunks = r.chunks as AsyncGenerator<VerifiedChunk, void, undefined>;
  const from = r.resumedFromChunk;
  const prev = r.prev;
  try {
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
      startedAt: prev ? prev.startedAt : now(),
      updatedAt: now(),
    };
    await ctx.state.update((s) => ({ ...s, progress }));
    if (from < total)
      ctx.log.info(
        { version: m.version, slot: r.target, bytes: m.slotImage.size },
        `downloading ${m.version} into slot ${r.target} (${m.slotImage.size} bytes)`,
      );
    // The write of chunk n runs while chunk n+1 is received and hashed: at
    // most two chunks are held, and a chunk is written only after its hash matched.
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
    const write = (c: VerifiedChunk) => {
      r.wholeHash?.update(c.bytes);
      writing = writeFull(fh, c.bytes, part.offset + c.index * CHUNK_SIZE, ctx.diskPath).then(
        () => {
          c.release();
          r.bytesWritten += c.bytes.length;
          flusher.wrote(c.bytes.length);
          return written(c.index + 1);
        },
      );
      // awaited before the next write or below; this keeps it from counting as unhandled meanwhile
      writing.catch(() => {});
    };
    try {
      const first = r.first;
      if (first && !first.done) write(first.value);
      for await (const c of chunks) {
        await writing;
        if (r.req.signal?.aborted) throw aborted(r.req.signal, "write-slot");
        write(c);
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
      // One failure, one code: a typed error keeps its own (a full disk, an
      // unwritable state directory...), a system error from the bundle file is
      // an I/O error, a bug surfaces as a bug; only a failed transfer (the
      // repository's errors, a stream that ended early) is a download failure.
      const transfer =
        isBaseError(err) && (err.code.startsWith("REPO_") || err.code === "BUNDLE_TRUNCATED");
      if (!transfer) {
        if (isBug(err) || isBaseError(err)) throw err;
        if (isSystemError(err)) throw ioError(`read ${r.req.source.location}`, err);
      }
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
    await closeDisk(r);
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

/**
 * Step 2: the bundle is the one the signed channel index names (README.md,
 * "Install procedure"): its manifest (which holds the version, the image's
 * sha256 and every chunk's hash) has the digest the index commits to, and
 * its layout gives the size and slot data offset the index names. Anything
 * else is another bundle (other bytes under the same name and version, an
 * older one put at the path, another channel's): refused before a byte of
 * the idle slot or the boot state changes.
 */
function checkPromise(e: IndexPromise, r: Run): void {
  const m = r.manifest as Manifest;
  const layout = (r.reader as BundleReader).layout;
  const differ: string[] = [];
  if (r.manifestSha256 !== e.manifestSha256)
    differ.push(`manifest sha256 ${r.manifestSha256}, the index names ${e.manifestSha256}`);
  if (m.version !== e.version) differ.push(`version ${m.version}, the index names ${e.version}`);
  if (r.slotOffset !== e.slotDataOffset)
    differ.push(`slot image at byte ${r.slotOffset}, the index names ${e.slotDataOffset}`);
  if (layout.archiveSize !== e.bundleSize)
    differ.push(`${layout.archiveSize} bytes, the index names ${e.bundleSize}`);
  if (differ.length > 0)
    refuse(
      "UPDATE_INDEX_MISMATCH",
      `${r.req.source.location} is not the bundle the signed channel index names (${m.name} ${m.version}: ${differ.join("; ")}); nothing written`,
      {
        version: m.version,
        manifestSha256: r.manifestSha256,
        expected: { version: e.version, manifestSha256: e.manifestSha256 },
      },
    );
}

/** Size and sha256 of the bundle file, fed in file order as the reader consumes it (step 6). */
class FileDigest {
  readonly #hash = createHash("sha256");
  size = 0;

  update(bytes: Uint8Array, offset: number): void {
    if (offset !== this.size)
      throw new Error(`FileDigest: bytes at offset ${offset}, expected ${this.size}`);
    this.#hash.update(bytes);
    this.size += bytes.length;
  }

  digest(): string {
    return this.#hash.digest("hex");
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
  const done = await ioStep(`read ${path} at byte ${position}`, () => readAt(fh, buf, position));
  buf.fill(0, done);
}

/** `buf` at `position`: one positional write, repeated only after a short write. */
function writeFull(fh: FileHandle, buf: Buffer, position: number, path: string): Promise<void> {
  return ioStep(`write ${path} at byte ${position}`, () => writeAt(fh, buf, position));
}
