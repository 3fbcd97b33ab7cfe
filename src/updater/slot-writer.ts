/**
 * The installer's slot writer (README.md, "Install procedure", steps 3 and
 * 5): the resume check and the first chunk verified before the boot state
 * changes, then the chunks written into the idle slot, the progress record
 * (synced data first) and the flush behind the download.
 */
import { createHash } from "node:crypto";
import { type FileHandle, open } from "node:fs/promises";
import {
  BundleError,
  type BundleReader,
  CHUNK_SIZE,
  chunkCount,
  type Manifest,
  type VerifiedChunk,
} from "../bundle/index.ts";
import type { Timer } from "../clock.ts";
import { isBaseError, isBug } from "../errors.ts";
import { ioError, ioStep, isSystemError, readAt, writeAt } from "../fileio.ts";
import { errText, UpdaterError } from "./errors.ts";
import type { InstallContext, Run } from "./installer.ts";
import type { InstallProgress } from "./state-file.ts";

/**
 * Step 3 (README.md, "Resume"): what a previous run wrote, then the chunk
 * stream from the first chunk not in the slot, and that chunk received and
 * verified. Reads the slot, writes nothing: a failure here leaves the slot's
 * bytes and the boot state as they were.
 */
export async function firstChunk(ctx: InstallContext, r: Run): Promise<void> {
  const m = r.manifest as Manifest;
  const reader = r.reader as BundleReader;
  const part = ctx.slots[r.target];
  const total = chunkCount(m.slotImage.size);
  const slotOffset = r.slotOffset as number;
  const fh = await openDisk(ctx, r);
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
export async function writeSlot(ctx: InstallContext, r: Run): Promise<void> {
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

/** Open the disk for the slot write; the handle is kept in `r.fh` for closeDisk. */
export async function openDisk(ctx: InstallContext, r: Run): Promise<FileHandle> {
  try {
    r.fh = await open(ctx.diskPath, "r+");
  } catch (cause) {
    throw ioError(`open ${ctx.diskPath} for writing`, cause);
  }
  return r.fh;
}

export async function closeDisk(r: Run): Promise<void> {
  const fh = r.fh;
  r.fh = undefined;
  await fh?.close();
}

export function aborted(signal: AbortSignal, step: string, cause?: unknown): UpdaterError {
  return new UpdaterError(
    "UPDATE_ABORTED",
    `install stopped during ${step}: ${errText(signal.reason ?? "aborted")}; it resumes on the next attempt`,
    {
      cause: cause ?? signal.reason,
      details: { step },
    },
  );
}

export function sha256(b: Uint8Array): string {
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
