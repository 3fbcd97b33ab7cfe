/**
 * Publishing a bundle to a channel (README.md, "Publishing", steps 1-9):
 * copy the bundle in, verify the copy, then replace the channel index
 * atomically. A crash at any instant leaves the previous index in place.
 */
import { createHash, type KeyObject, randomBytes } from "node:crypto";
import { createReadStream } from "node:fs";
import { link, mkdir, open, readFile, rename, unlink } from "node:fs/promises";
import { join } from "node:path";
import semver from "semver";
import {
  BundleError,
  checkBundleFile,
  keyId as keyIdOf,
  manifestDigest,
  publicKeyFromPrivate,
} from "../bundle/index.ts";
import { fsyncDir, ioError, ioStep } from "../fileio.ts";
import { CHANNEL_NAME, CHANNEL_NAME_RULE } from "../image/index.ts";
import {
  type ChannelIndex,
  decodeIndex,
  encodeIndex,
  INDEX_FORMAT_VERSION,
  INDEX_TYPE,
  type IndexSigned,
  signIndex,
} from "./channel-index.ts";
import { RepoError } from "./errors.ts";
import { type Wave, wavesProblems } from "./waves.ts";

export const DEFAULT_EXPIRES_IN_MS = 30 * 24 * 3600 * 1000;
const FILE_NAME = /^[A-Za-z0-9._+~-]+$/;

/** The file operations publish makes; a seam so tests can fail one at the worst instant. */
export interface PublishIo {
  rename(from: string, to: string): Promise<void>;
}

export interface PublishOptions {
  repoDir: string;
  bundlePath: string;
  channel: string;
  /** The private key that signed the bundle; it signs the index too. */
  key: KeyObject;
  /** Index lifetime; default 30 days. */
  expiresInMs?: number;
  /** Oldest running version allowed to install this one; default "0.0.0" (any). */
  minUpdateFrom?: string;
  /** Share of hosts that take it (0-100); default 100. */
  rolloutPercent?: number;
  /** Staged waves after issuedAt (waves.ts); with them the percent must be 100. */
  waves?: Wave[];
  /** issuedAt; default the current time. */
  now?: Date;
  io?: PublishIo;
}

export interface PublishResult {
  channel: string;
  serial: number;
  name: string;
  version: string;
  /** Bundle path from the repository root. */
  bundlePath: string;
  /** False when the same bytes were already in the repository. */
  bundleCopied: boolean;
  size: number;
  sha256: string;
  slotDataOffset: number;
  /** sha256 of the bundle's manifest.json: what the index commits to. */
  manifestSha256: string;
  indexPath: string;
  issuedAt: string;
  expiresAt: string;
  keyId: string;
  previousVersion: string | null;
}

const defaultIo: PublishIo = { rename };

interface BundleFacts {
  name: string;
  version: string;
  compatible: string;
  slotDataOffset: number;
  manifestSha256: string;
}

export async function publish(o: PublishOptions): Promise<PublishResult> {
  const io = o.io ?? defaultIo;
  const now = o.now ?? new Date();
  // 1. options
  const expiresInMs = o.expiresInMs ?? DEFAULT_EXPIRES_IN_MS;
  const minUpdateFrom = o.minUpdateFrom ?? "0.0.0";
  const rolloutPercent = o.rolloutPercent ?? 100;
  const problems: string[] = [];
  if (!CHANNEL_NAME.test(o.channel))
    problems.push(`channel "${o.channel}" is not ${CHANNEL_NAME_RULE}`);
  if (!Number.isSafeInteger(expiresInMs) || expiresInMs <= 0)
    problems.push(`expiry ${expiresInMs} ms must be a positive integer`);
  if (semver.valid(minUpdateFrom) !== minUpdateFrom)
    problems.push(`minimum version to update from "${minUpdateFrom}" is not a semantic version`);
  if (!Number.isInteger(rolloutPercent) || rolloutPercent < 0 || rolloutPercent > 100)
    problems.push(`rollout percent ${rolloutPercent} must be an integer 0-100`);
  if (o.waves !== undefined) {
    problems.push(...wavesProblems(o.waves, "waves"));
    if (rolloutPercent !== 100)
      problems.push(
        `rollout percent ${rolloutPercent} and waves together: give one (the waves reach 100%)`,
      );
  }
  if (problems.length > 0)
    throw new RepoError("REPO_PUBLISH_REFUSED", `cannot publish: ${problems.join("; ")}`, {
      details: { problems },
    });

  const bundlesDir = join(o.repoDir, "bundles");
  const channelsDir = join(o.repoDir, "channels");
  const indexPath = join(channelsDir, `${o.channel}.json`);
  await ioStep(`create ${bundlesDir} and ${channelsDir}`, async () => {
    await mkdir(bundlesDir, { recursive: true });
    await mkdir(channelsDir, { recursive: true });
  });

  // 2. the current index, if any
  const current = await readCurrentIndex(indexPath);

  // 3. copy the bundle in under a temporary name, hashing it
  const tmpBundle = join(bundlesDir, `.incoming-${randomBytes(6).toString("hex")}.tmp`);
  let tmpLeft = true;
  try {
    const { size, sha256 } = await copyHashed(o.bundlePath, tmpBundle);

    // 4. the copy (not the source, which could still change) must verify with the key
    const publicKey = o.key.type === "private" ? publicKeyFromPrivate(o.key) : o.key;
    const keyId = keyIdOf(publicKey);
    let facts: BundleFacts;
    try {
      const checked = await checkBundleFile(tmpBundle, [publicKey]);
      facts = {
        ...checked.manifest,
        slotDataOffset: checked.layout.slotOffset,
        manifestSha256: manifestDigest(checked.manifest),
      };
    } catch (cause) {
      if (!(cause instanceof BundleError)) throw cause;
      const reason = cause.message.replaceAll(tmpBundle, o.bundlePath);
      throw new RepoError(
        "REPO_PUBLISH_REFUSED",
        `bundle ${o.bundlePath} does not verify with key ${keyId} (${cause.code}): ${reason}`,
        { cause, details: { bundle: o.bundlePath, keyId, bundleError: cause.code } },
      );
    }

    // 5. policy against the channel's current state
    refuseIfInconsistent(o, facts, current, sha256, minUpdateFrom);

    // 6. place it as bundles/<name>-<version>.bundle, never replacing other bytes
    const fileName = `${facts.name}-${facts.version}.bundle`;
    if (!FILE_NAME.test(fileName))
      throw new RepoError(
        "REPO_PUBLISH_REFUSED",
        `bundle name "${facts.name}" cannot be part of a file name`,
        { details: { name: facts.name } },
      );
    const finalBundle = join(bundlesDir, fileName);
    const bundleCopied = await placeBundle(tmpBundle, finalBundle, sha256);
    tmpLeft = false;
    if (bundleCopied) await fsyncDir(bundlesDir);

    // 7. the new signed index
    const expiresAt = new Date(now.getTime() + expiresInMs);
    const signed: IndexSigned = {
      type: INDEX_TYPE,
      formatVersion: INDEX_FORMAT_VERSION,
      channel: o.channel,
      name: facts.name,
      compatible: facts.compatible,
      serial: (current?.signed.serial ?? 0) + 1,
      issuedAt: now.toISOString(),
      expiresAt: expiresAt.toISOString(),
      latest: {
        version: facts.version,
        bundle: `../bundles/${fileName}`,
        size,
        sha256,
        slotDataOffset: facts.slotDataOffset,
        manifestSha256: facts.manifestSha256,
        minUpdateFrom,
      },
      rollout: { percent: rolloutPercent, ...(o.waves ? { waves: o.waves } : {}) },
    };
    const index = signIndex(signed, o.key);

    // 8-9. tmp, fsync, rename, fsync dir
    await writeAtomically(indexPath, encodeIndex(index), io);

    return {
      channel: o.channel,
      serial: signed.serial,
      name: facts.name,
      version: facts.version,
      bundlePath: `bundles/${fileName}`,
      bundleCopied,
      size,
      sha256,
      slotDataOffset: facts.slotDataOffset,
      manifestSha256: facts.manifestSha256,
      indexPath,
      issuedAt: signed.issuedAt,
      expiresAt: signed.expiresAt,
      keyId,
      previousVersion: current?.signed.latest.version ?? null,
    };
  } finally {
    if (tmpLeft) await unlink(tmpBundle).catch(() => {});
  }
}

function refuseIfInconsistent(
  o: PublishOptions,
  facts: { name: string; version: string; compatible: string },
  current: ChannelIndex | undefined,
  sha256: string,
  minUpdateFrom: string,
): void {
  const refuse = (message: string, details: Record<string, unknown>) => {
    throw new RepoError("REPO_PUBLISH_REFUSED", message, { details });
  };
  if (semver.valid(facts.version) !== facts.version)
    refuse(`bundle ${o.bundlePath}: version "${facts.version}" is not a semantic version`, {
      version: facts.version,
    });
  if (semver.gt(minUpdateFrom, facts.version))
    refuse(
      `minimum version to update from ${minUpdateFrom} is later than the bundle's version ${facts.version}`,
      { minUpdateFrom, version: facts.version },
    );
  if (current === undefined) return;
  const cur = current.signed;
  if (cur.name !== facts.name || cur.compatible !== facts.compatible)
    refuse(
      `channel "${o.channel}" carries ${cur.name} for ${cur.compatible}; the bundle is ${facts.name} for ${facts.compatible}`,
      {
        channel: o.channel,
        current: { name: cur.name, compatible: cur.compatible },
        bundle: facts,
      },
    );
  if (semver.lt(facts.version, cur.latest.version))
    refuse(
      `channel "${o.channel}" is at ${cur.latest.version}; publishing ${facts.version} would be a downgrade, which agents refuse to install (publish a higher version with the old content instead)`,
      { channel: o.channel, current: cur.latest.version, version: facts.version },
    );
  if (semver.eq(facts.version, cur.latest.version) && cur.latest.sha256 !== sha256)
    refuse(
      `channel "${o.channel}" already has version ${facts.version} with other content (sha256 ${cur.latest.sha256}); give the new bundle a new version`,
      { channel: o.channel, version: facts.version, current: cur.latest.sha256, bundle: sha256 },
    );
}

async function readCurrentIndex(indexPath: string): Promise<ChannelIndex | undefined> {
  let bytes: Uint8Array;
  try {
    bytes = await readFile(indexPath);
  } catch (cause) {
    if ((cause as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw ioError(`read ${indexPath}`, cause);
  }
  try {
    return decodeIndex(bytes);
  } catch (cause) {
    throw new RepoError(
      "REPO_BAD_INDEX",
      `current index ${indexPath} is unreadable, so the next serial is unknown; restore it (or remove it to restart the channel at serial 1, which agents that saw it will refuse): ${(cause as Error).message}`,
      { cause, details: { path: indexPath } },
    );
  }
}

async function copyHashed(from: string, to: string): Promise<{ size: number; sha256: string }> {
  return ioStep(`copy ${from} to ${to}`, async () => {
    const hash = createHash("sha256");
    let size = 0;
    const out = await open(to, "wx");
    try {
      for await (const chunk of createReadStream(from, { highWaterMark: 1 << 20 })) {
        const b = chunk as Buffer;
        hash.update(b);
        size += b.length;
        await out.write(b);
      }
      await out.sync();
    } finally {
      await out.close();
    }
    return { size, sha256: hash.digest("hex") };
  });
}

async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 }))
    hash.update(chunk as Buffer);
  return hash.digest("hex");
}

/** Link tmp to final (fails if final exists: no clobbering), then drop tmp. */
async function placeBundle(tmp: string, final: string, sha256: string): Promise<boolean> {
  try {
    await link(tmp, final);
    await unlink(tmp);
    return true;
  } catch (cause) {
    if ((cause as NodeJS.ErrnoException).code !== "EEXIST") throw ioError(`link ${final}`, cause);
  }
  const existing = await ioStep(`hash ${final}`, () => sha256File(final));
  await unlink(tmp).catch(() => {});
  if (existing !== sha256)
    throw new RepoError(
      "REPO_PUBLISH_REFUSED",
      `${final} already exists with other content (sha256 ${existing}, new ${sha256}); published bundles are immutable, give the new one a new version`,
      { details: { path: final, existing, sha256 } },
    );
  return false;
}

async function writeAtomically(path: string, bytes: Uint8Array, io: PublishIo): Promise<void> {
  const dir = join(path, "..");
  const base = path.slice(dir.length + 1);
  const tmp = join(dir, `.${base}.${randomBytes(6).toString("hex")}.tmp`);
  try {
    await ioStep(`write ${tmp}`, async () => {
      const fh = await open(tmp, "wx");
      try {
        await fh.writeFile(bytes);
        await fh.sync();
      } finally {
        await fh.close();
      }
    });
    await ioStep(`rename ${tmp} to ${path}`, () => io.rename(tmp, path));
  } catch (err) {
    await unlink(tmp).catch(() => {});
    throw err;
  }
  await fsyncDir(dir);
}
