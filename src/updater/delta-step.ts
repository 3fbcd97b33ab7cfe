/**
 * Steps 3 and 5 of a delta install (README.md, "Delta install"), in the
 * installer's plan: the slots indexed, the plan made and the server's first
 * range answer checked before the boot state changes; then the chunks
 * written, each verified, and the image read back for step 6.
 */
import type { FileHandle } from "node:fs/promises";
import type { BundleReader, Manifest } from "../bundle/index.ts";
import { isBaseError, isBug } from "../errors.ts";
import { parseSlotVerity, type SlotName } from "../image/index.ts";
import type { RangeStats } from "../repo/index.ts";
import { formatVerity } from "../verity/index.ts";
import {
  ChunkMismatch,
  checkComputed,
  countPlan,
  type DeltaCounts,
  fetchSpans,
  hashRegion,
  indexSeeds,
  PieceCursor,
  type PlanItem,
  planDelta,
  type Seed,
  writeDelta,
} from "./delta.ts";
import { errText, UpdaterError } from "./errors.ts";
import type { InstallContext, Run } from "./installer.ts";
import { aborted, closeDisk, openDisk } from "./slot-writer.ts";

/** Coalesce chunks closer than this (bytes), and make at most this many ranges. */
export const DELTA_MAX_GAP_BYTES = 4096;
export const DELTA_MAX_RANGES = 256;

export interface DeltaRun {
  plan: PlanItem[];
  seeds: Seed[];
  target: number;
  counts: DeltaCounts;
  stats: RangeStats;
  cursor: PieceCursor;
  /** Bytes read of the bundle's head in step 1 (manifest, signature, headers). */
  headBytes: number;
}

/** The block of a slot's verity parameters (src/build/slot.ts: data and hash blocks are 4096 bytes). */
const SLOT_VERITY_BLOCK = 4096;

/**
 * Step 3 of a delta install, when it applies (a format 2 manifest, a source
 * with ranges): index the booted and the target slot by the manifest's
 * chunking, plan, and open the fetch with its first answer checked. Reads,
 * writes nothing. false: install in full (not format 2, no ranges, or a
 * server that ignores Range — logged).
 */
export async function deltaFirst(ctx: InstallContext, r: Run): Promise<boolean> {
  const m = r.manifest as Manifest;
  const cdc = m.slotImage.cdc;
  const ranges = r.req.source.ranges;
  if (m.formatVersion !== 2 || !cdc || !ranges || ctx.delta === false) return false;
  const slotOffset = r.slotOffset as number;
  const fh = await openDisk(ctx, r);
  // Only where images lie, not whole partitions: a slot's squashfs is its data
  // area, which the boot state's X_verity gives (hashStartBlock blocks of 4096
  // bytes: the data, and the superblock when there is one). An empty target (a
  // first install, or a run stopped after step 4) is read as far as the new
  // image reaches, where a stopped run's chunks are. A wrong extent costs bytes
  // fetched, never correctness: every chunk's sha256 is checked when it is read.
  const boot = await ctx.boot.readState();
  const seed = (slot: SlotName, name: string, target: boolean, fallback: number): Seed => {
    const v = parseSlotVerity(boot.slots[slot].verity);
    const extent = v ? v.hashStartBlock * SLOT_VERITY_BLOCK : fallback;
    return {
      name,
      offset: ctx.slots[slot].offset,
      size: Math.min(ctx.slots[slot].size, extent),
      target,
    };
  };
  const seeds: Seed[] = [
    seed(ctx.booted, `slot ${ctx.booted} (booted)`, false, ctx.slots[ctx.booted].size),
    seed(r.target, `slot ${r.target} (target)`, true, m.slotImage.size),
  ];
  const index = await indexSeeds(fh, ctx.diskPath, seeds, cdc);
  const plan = planDelta(cdc, index, seeds, m.verity.hashOffset);
  const counts = countPlan(plan);
  const spans = fetchSpans(plan, slotOffset, {
    maxGapBytes: DELTA_MAX_GAP_BYTES,
    maxRanges: DELTA_MAX_RANGES,
  });
  const stats: RangeStats = { requests: 0, bytes: 0, multipart: undefined };
  const cursor = new PieceCursor(
    ranges.call(r.req.source, spans, {
      fileSize: (r.reader as BundleReader).layout.archiveSize,
      stats,
      ...(r.req.signal ? { signal: r.req.signal } : {}),
    }),
  );
  ctx.log.info(
    { version: m.version, ...counts, ranges: spans.length },
    `delta: ${counts.inPlace + counts.copied} of ${plan.length} chunks of ${m.version} are on this host (${counts.inPlaceBytes + counts.copiedBytes} bytes); fetching ${counts.fetched} (${counts.fetchedChunkBytes} bytes) in ${spans.length} ranges`,
  );
  // the server's first answer, before the boot state changes: one that ignores
  // Range or answers wrongly costs nothing
  const first = plan.find((p) => p.kind === "fetch");
  try {
    if (first) await cursor.peek();
  } catch (err) {
    await cursor.close().catch(() => {});
    await closeDisk(r);
    if (isBaseError(err) && err.code === "REPO_DOWNLOAD_FAILED" && err.details.rangeIgnored) {
      ctx.log.warn(
        { url: r.req.source.location },
        `${r.req.source.location} ignores Range requests: installing ${m.version} in full`,
      );
      return false;
    }
    if (r.req.signal?.aborted) throw aborted(r.req.signal, "check-first-chunk", err);
    if (isBaseError(err) && err.code.startsWith("REPO_"))
      throw new UpdaterError(
        "UPDATE_DOWNLOAD_FAILED",
        `delta download of ${m.version} from ${r.req.source.location} failed: ${err.message}; nothing written: slot ${r.target} and the boot state are as they were`,
        { cause: err },
      );
    throw err;
  }
  // the bundle head is all this install reads of the stream from byte 0
  r.head?.destroy();
  r.file = undefined;
  r.delta = {
    plan,
    seeds,
    target: 1,
    counts,
    stats,
    cursor,
    headBytes: slotOffset,
  };
  return true;
}

/** Step 5 of a delta install: every chunk verified, then written; the image read back for step 6. */
export async function writeDeltaSlot(ctx: InstallContext, r: Run): Promise<void> {
  const m = r.manifest as Manifest;
  const d = r.delta as DeltaRun;
  const fh = r.fh as FileHandle;
  try {
    r.bytesWritten = await writeDelta({
      fh,
      diskPath: ctx.diskPath,
      seeds: d.seeds,
      target: d.target,
      plan: d.plan,
      slotOffset: r.slotOffset as number,
      cursor: d.cursor,
      ...(ctx.onChunk ? { onChunk: ctx.onChunk } : {}),
      ...(r.req.signal ? { signal: r.req.signal } : {}),
    });
    if (d.counts.computed > 0) await makeTree(ctx, r, fh);
    // step 6 checks the image as it is on the disk now, whole
    r.wholeHash = await hashRegion(fh, ctx.diskPath, ctx.slots[r.target].offset, m.slotImage.size);
  } catch (err) {
    if (r.req.signal?.aborted) throw aborted(r.req.signal, "write-slot", err);
    if (err instanceof ChunkMismatch)
      throw new UpdaterError(
        "UPDATE_VERIFY_FAILED",
        `${m.version}: ${err.message}; not written (the next attempt indexes the slots again)`,
        {
          cause: err,
          details: { offset: err.item.offset, expected: err.item.sha256, actual: err.actual },
        },
      );
    if (isBug(err) || (isBaseError(err) && !err.code.startsWith("REPO_"))) throw err;
    throw new UpdaterError(
      "UPDATE_DOWNLOAD_FAILED",
      `delta download of ${m.version} from ${r.req.source.location} stopped: ${errText(err)}; the next attempt finds what was written in slot ${r.target} and fetches the rest`,
      { cause: err },
    );
  } finally {
    await d.cursor.close().catch(() => {});
    await closeDisk(r);
  }
}

/**
 * The verity superblock and tree made on the host from the data just written
 * (cheaper than fetching them: an edit changes nearly every leaf hash after
 * it), with the manifest's parameters; its root hash and each of its chunks
 * must be the signed ones, and step 8 reads it back as for a full install.
 */
async function makeTree(ctx: InstallContext, r: Run, fh: FileHandle): Promise<void> {
  const m = r.manifest as Manifest;
  const v = m.verity;
  const part = ctx.slots[r.target];
  await fh.datasync();
  const made = await formatVerity({
    dataPath: ctx.diskPath,
    dataOffset: part.offset,
    dataSize: v.dataBlocks * v.dataBlockSize,
    hashPath: ctx.diskPath,
    hashOffset: part.offset + v.hashOffset,
    hashAlgorithm: v.hashAlgorithm,
    dataBlockSize: v.dataBlockSize,
    hashBlockSize: v.hashBlockSize,
    salt: Buffer.from(v.salt, "hex"),
    ...(v.uuid ? { uuid: v.uuid } : {}),
    superblock: v.superblock,
    threads: 1,
  });
  if (made.rootHash !== v.rootHash)
    throw new UpdaterError(
      "UPDATE_VERIFY_FAILED",
      `slot ${r.target}: the verity tree made from the written data has root hash ${made.rootHash}, the manifest says ${v.rootHash}`,
      { details: { expected: v.rootHash, actual: made.rootHash } },
    );
  await checkComputed(fh, ctx.diskPath, part.offset, (r.delta as DeltaRun).plan);
}
