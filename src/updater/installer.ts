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
  SLOT_BOOT_FILES,
  slotBootFile,
} from "../bootloader/index.ts";
import {
  BundleReader,
  CHUNK_SIZE,
  type Manifest,
  manifestDigest,
  type VerifiedChunk,
} from "../bundle/index.ts";
import type { Clock } from "../clock.ts";
import { isBaseError } from "../errors.ts";
import { ioError } from "../fileio.ts";
import type { SlotName } from "../image/index.ts";
import type { Logger } from "../log.ts";
import type { RangePiece, RangeStats, Span } from "../repo/index.ts";
import { verifyVerity } from "../verity/index.ts";
import { type DeltaRun, deltaFirst, writeDeltaSlot } from "./delta-step.ts";
import { errText, UpdaterError, type UpdaterErrorCode } from "./errors.ts";
import type { ByteRange } from "./machine.ts";
import { decideUpdate, installBlocker, otherSlot } from "./policy.ts";
import { aborted, closeDisk, firstChunk, writeSlot } from "./slot-writer.ts";
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
  /**
   * Byte ranges of the bundle (ascending, disjoint), for a delta install of a
   * format 2 bundle (README.md, "Delta install"); absent: full installs only.
   */
  ranges?(
    spans: readonly Span[],
    o: { fileSize: number; stats: RangeStats; signal?: AbortSignal },
  ): AsyncIterable<RangePiece>;
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
  /** One write; with `bootToken`, `boot_token` is set in it too (a kexec counts a boot as GRUB does). */
  writeState(s: BootState, o?: { bootToken?: string }): Promise<void>;
  /** A Secure Boot disk: GRUB boots a slot only by its signed boot file (BootDisk; absent: none). */
  isSecureBoot?(): boolean;
  /** Where slot `slot`'s boot file and signature are, refused unless exactly these sizes. */
  slotBootFileRanges?(slot: SlotName, fileBytes: number, sigBytes: number): unknown;
  /** Rewrites slot `slot`'s boot file and signature in place (README.md, "Secure Boot"). */
  writeSlotBootFile?(slot: SlotName, file: Uint8Array, sig: Uint8Array): Promise<void>;
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
  /** false: never a delta install, always the full download (default: delta when the bundle and source allow). */
  delta?: boolean;
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
      /** Bytes received from the source (framing included), against the bundle's full size. */
      bytesFetched: number;
      bundleBytes: number;
      /** A delta install: requests made and chunks by where they came from. */
      delta?: DeltaSummary;
    }
  | { outcome: "up-to-date"; version: string }
  /** Already installed and activated; it runs after the next reboot. */
  | { outcome: "pending-reboot"; slot: SlotName; version: string };

export interface DeltaSummary {
  requests: number;
  chunks: number;
  inPlace: number;
  copied: number;
  fetched: number;
  /** Made on the host (the verity tree), not fetched. */
  computed: number;
}

export interface Run {
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
  /** A delta install (format 2, a source with ranges): its plan and fetch, from step 3. */
  delta?: DeltaRun;
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
        checkSecureBoot(ctx, r.target, m);
      },
    },
    // 3. where the write starts, and its first chunk received and verified: a bundle
    //    that is bad before its first slot byte costs nothing, not even the fallback
    {
      name: "check-first-chunk",
      async run(r) {
        if (await deltaFirst(ctx, r)) return;
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
        if (r.delta) await writeDeltaSlot(ctx, r);
        else await writeSlot(ctx, r);
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
    // 9. only now: boot the new slot next, on trial; under Secure Boot its
    //    signed boot file first (GRUB does not try the target before the
    //    boot state names it, so a crash between the two writes is harmless)
    {
      name: "activate",
      async run(r) {
        const m = r.manifest as Manifest;
        if (m.secureBoot && ctx.boot.writeSlotBootFile) {
          const p = secureBootPieces(m);
          await ctx.boot.writeSlotBootFile(r.target, p.file, p.sig);
          ctx.log.info(
            { slot: r.target, version: m.version },
            `wrote ${m.version}'s signed boot file into /${SLOT_BOOT_FILES[r.target]} for slot ${r.target}`,
          );
        }
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
        const bundleBytes = (r.reader as BundleReader).layout.archiveSize;
        const d = r.delta;
        r.result = {
          outcome: "installed",
          slot: r.target,
          version: m.version,
          resumedFromChunk: r.resumedFromChunk,
          bytesWritten: r.bytesWritten,
          bytesFetched: d
            ? d.headBytes + d.stats.bytes
            : bundleBytes - Math.min(r.resumedFromChunk * CHUNK_SIZE, m.slotImage.size),
          bundleBytes,
          ...(d
            ? {
                delta: {
                  requests: d.stats.requests,
                  chunks: d.plan.length,
                  inPlace: d.counts.inPlace,
                  copied: d.counts.copied,
                  fetched: d.counts.fetched,
                  computed: d.counts.computed,
                },
              }
            : {}),
        };
        const pct = ((100 * r.result.bytesFetched) / bundleBytes).toFixed(1);
        ctx.log.info(
          {
            version: m.version,
            bytesFetched: r.result.bytesFetched,
            bundleBytes,
            delta: r.result.delta,
          },
          `${m.version}: fetched ${r.result.bytesFetched} of ${bundleBytes} bytes (${pct}%)${d ? ` in ${d.stats.requests} range requests, ${d.counts.inPlace + d.counts.copied} of ${d.plan.length} chunks found on this host` : ""}`,
        );
      },
    },
  ];
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

function secureBootPieces(m: Manifest): { file: Uint8Array; sig: Uint8Array } {
  const sb = m.secureBoot as NonNullable<Manifest["secureBoot"]>;
  return { file: Buffer.from(sb.slotFile, "base64"), sig: Buffer.from(sb.slotSig, "base64") };
}

/**
 * Step 2, Secure Boot (src/bootloader/README.md, "Secure Boot", "Updates"):
 * a Secure Boot disk takes only a bundle with the slot's signed boot file,
 * for this image (its root hash, verity and version), and of the size of
 * the target's /SLOTX and /SLOTX.SIG, which are rewritten in place; a
 * bundle with one needs such a disk. Refused before anything is written.
 */
function checkSecureBoot(ctx: InstallContext, target: SlotName, m: Manifest): void {
  const disk = ctx.boot;
  const sbDisk = disk.isSecureBoot?.() ?? false;
  const file = `/${SLOT_BOOT_FILES[target]}`;
  if (!m.secureBoot) {
    if (sbDisk)
      refuse(
        "UPDATE_REFUSED",
        `${m.version} was built without secureBoot, so its bundle has no signed boot file; ${ctx.diskPath} boots under Secure Boot and GRUB would refuse slot ${target}: nothing written (build the image with the spec's secureBoot: section)`,
        { version: m.version, slot: target },
      );
    return;
  }
  const p = secureBootPieces(m);
  const expected = slotBootFile({
    rootHash: m.verity.rootHash,
    verity: formatSlotVerity(m.verity),
    version: m.version,
  });
  if (!Buffer.from(p.file).toString("latin1").startsWith(expected))
    refuse(
      "UPDATE_REFUSED",
      `${m.version}: the signed boot file in its manifest does not name its own root hash, verity and version: nothing written`,
      { version: m.version },
    );
  if (!sbDisk || !disk.slotBootFileRanges || !disk.writeSlotBootFile)
    refuse(
      "UPDATE_REFUSED",
      `${m.version} is a Secure Boot image, but the ESP of ${ctx.diskPath} has no signed boot files (${file}, ${file}.SIG) to put its own in: nothing written (the disk was built without secureBoot)`,
      { version: m.version, slot: target },
    );
  try {
    disk.slotBootFileRanges(target, p.file.length, p.sig.length);
  } catch (cause) {
    throw new UpdaterError(
      "UPDATE_REFUSED",
      `${m.version}'s signed boot file (${p.file.length} bytes, signature ${p.sig.length}) cannot replace slot ${target}'s on ${ctx.diskPath}: ${errText(cause)}; nothing written (a disk built before Secure Boot updates, or with another key size, needs a new disk image)`,
      { cause, details: { version: m.version, slot: target } },
    );
  }
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
