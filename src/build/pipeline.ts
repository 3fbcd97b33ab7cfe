/**
 * The build pipeline (README.md, "The pipeline"): spec → kernel → initramfs →
 * rootfs (the spec's layers, then the boot flow and the agent) → squashfs →
 * slot image with dm-verity → ESP with GRUB and the initial boot state →
 * state filesystem → GPT disk → signed bundle → build.json.
 *
 * Every step is named, timed and logged with its output size. All work
 * happens in a private directory inside the output directory
 * (`.build-<pid>-XXXXXX`); the outputs are renamed into place only when every
 * step succeeded, so a failed or interrupted build leaves the previous outputs
 * as they were and no half-written file. An interrupted build (the `signal`)
 * stops the tools it started, as process groups (src/exec.ts), and removes
 * its directory; the directory of a build that was killed outright is removed
 * by the next build into the same output directory.
 */
import {
  copyFile,
  link,
  lstat,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  readlink,
  rename,
  rm,
  rmdir,
  stat,
  symlink,
  writeFile,
} from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";
import { gunzipSync } from "node:zlib";
import {
  bootStateToEnv,
  buildEsp,
  buildGrubEfi,
  detachedSignature,
  EMPTY_SLOT_BOOT_FILE,
  encodeEnv,
  grubConfig,
  INITRD_CPIO_SIGNATURE,
  initialBootState,
  loadSecureBootKeys,
  SLOT_BOOT_FILES,
  signatureName,
  signedSlotBootFile,
  slotBootFile,
} from "../bootloader/index.ts";
import {
  DEFAULT_CDC,
  hashSlotImage,
  type KeyObject,
  keyId,
  loadPrivateKey,
  loadPublicKey,
  publicKeyFromPrivate,
  writeBundle,
} from "../bundle/index.ts";
import { formatBytes, type TableJson, tableToJson } from "../disk/index.ts";
import { ToolError } from "../errors.ts";
import { run, toolTimeMs, withToolSignal } from "../exec.ts";
import { AGENT_DIR, formatSlotVerity } from "../image/index.ts";
import { type Logger, logger } from "../log.ts";
import type { VerityParams } from "../verity/index.ts";
import { agentConfigOf, agentFiles, NODE_BINARY, runtimePackages, SOURCE_ROOT } from "./agent.ts";
import { abforgePartitions, assembleDisk } from "./assemble.ts";
import { hostSpecificEntries } from "./debootstrap.ts";
import { BuildError } from "./errors.ts";
import { buildStateFs } from "./filesystems.ts";
import { type DiskFormat, type DiskOutput, writeDiskFormat } from "./formats.ts";
import {
  buildInitramfs,
  ROOTFS_MOUNT_POINTS,
  rootfsBootFiles,
  sourceDateEpoch,
} from "./initramfs.ts";
import { fetchKernel, type KernelTree } from "./kernel.ts";
import { applyLayers } from "./layers.ts";
import { buildSlotImage } from "./slot.ts";
import type { FileEntry, ImageSpec, LayerOrigin, LayerSpec, UpdateMode } from "./spec/index.ts";
import { loadSpec } from "./spec/index.ts";
import { buildSquashfs, fileDigest } from "./squashfs.ts";
import type { StagingTree } from "./staging.ts";
import {
  detectInit,
  hasNetworkd,
  type InitKind,
  type InitSystem,
  systemdFiles,
  updateMode,
} from "./systemd.ts";

export interface BuildOptions {
  specPath: string;
  outDir: string;
  /** Overrides the spec's version. */
  version?: string;
  /** The ed25519 private key that signs the bundle. */
  keyPath: string;
  /** Downloaded kernel packages are kept here between builds. */
  cacheDir?: string;
  log?: Logger;
  /**
   * Aborting it interrupts the build (`BUILD_INTERRUPTED`): the running tools
   * are stopped, the temporary directory removed, `outDir` left as it was.
   */
  signal?: AbortSignal;
  /** Progress of the longest step (squashfs), as it runs. */
  onProgress?: (p: BuildProgress) => void;
  /**
   * The disk's forms to write besides disk.img (formats.ts); default `["raw"]`.
   * disk.img (raw) is always written: `abforge qemu` and the disk commands read it.
   */
  formats?: readonly DiskFormat[];
}

export interface BuildProgress {
  step: string;
  done: number;
  total: number;
}

export interface StepReport {
  name: string;
  ms: number;
  /** Size of what the step produced, in bytes (0 when it produced no file). */
  bytes: number;
  /** Of `ms`, the time spent inside external tools (src/exec.ts run()). */
  toolMs: number;
}

export interface BuildReport {
  name: string;
  version: string;
  compatible: string;
  createdAt: string;
  kernel: { version: string; package: string | null };
  /** The image's init: `/sbin/init` after the spec's layers (systemd.ts `detectInit`). */
  init: InitKind;
  /** How the update check runs: `agent run` as a daemon, or a systemd timer of `agent check`. */
  updateMode: UpdateMode;
  slotImage: { size: number; sha256: string };
  verity: VerityParams;
  bundle: { file: string; size: number; sha256: string; keyId: string };
  disk: { file: string; size: number; table: TableJson };
  /** The disk in each form made, each checked: raw (disk.img) first, then `--format`'s others. */
  outputs: DiskOutput[];
  steps: StepReport[];
  totalMs: number;
  /** Time spent inside external tools (mksquashfs, mkfs.*, grub-mkimage, ...), by tool. */
  toolMs: Record<string, number>;
}

export interface BuildResult {
  disk: string;
  bundle: string;
  buildJson: string;
  /** Each disk output's path in the output directory, with its format. */
  outputs: { format: DiskFormat; path: string }[];
  report: BuildReport;
}

const ORIGIN = (label: string): LayerOrigin => ({ file: "(abforge)", line: 0, col: 0, label });

export function defaultCacheDir(): string {
  return (
    process.env.ABFORGE_CACHE ??
    join(process.env.XDG_CACHE_HOME ?? join(process.env.HOME ?? "/tmp", ".cache"), "abforge")
  );
}

/** The prefix of a build's temporary directory; the builder's pid follows. */
const WORK_PREFIX = ".build-";
const WORK_NAME = /^\.build-(\d+)-/;

/** Run a build end to end (see the module comment). */
export function build(o: BuildOptions): Promise<BuildResult> {
  return o.signal ? withToolSignal(o.signal, () => runBuild(o)) : runBuild(o);
}

async function runBuild(o: BuildOptions): Promise<BuildResult> {
  const log = (o.log ?? logger()).child({ module: "build" });
  const started = performance.now();
  const toolsBefore = toolTimeMs();
  const steps: StepReport[] = [];
  const step = async <T>(
    name: string,
    fn: () => Promise<T>,
    output?: (r: T) => string | undefined,
  ): Promise<T> => {
    const t = performance.now();
    const toolsAtStart = sumToolMs();
    if (o.signal?.aborted) throw interrupted(o, name);
    log.info({ step: name }, `${name} ...`);
    let result: T;
    try {
      result = await fn();
    } catch (err) {
      if (o.signal?.aborted) throw interrupted(o, name, err);
      throw err;
    }
    const file = output?.(result);
    const bytes = file ? (await stat(file)).size : 0;
    const ms = Math.round(performance.now() - t);
    steps.push({ name, ms, bytes, toolMs: Math.round(sumToolMs() - toolsAtStart) });
    log.info(
      { step: name, ms, bytes },
      `${name} done${bytes ? ` (${formatBytes(bytes)})` : ""} in ${(ms / 1000).toFixed(1)} s`,
    );
    return result;
  };

  const spec = await step("spec", () => loadSpec(o.specPath, { version: o.version }));
  const key = await step("key", () => loadPrivateKey(o.keyPath));
  const sb = spec.secureBoot;
  const sbKeys = sb
    ? await step("secure boot key", () => loadSecureBootKeys(sb.keyPath, sb.certPath))
    : undefined;
  const trusted = await trustedKeys(spec, key);

  const createdOut = await makeOutDir(o.outDir);
  await removeStaleWork(o.outDir, log);
  const work = await mkdtemp(join(o.outDir, `${WORK_PREFIX}${process.pid}-`));
  let built = false;
  try {
    const kernel = await step("kernel", () =>
      fetchKernel({
        ...(spec.kernel.package ? { package: spec.kernel.package } : { path: spec.kernel.path! }),
        cacheDir: o.cacheDir ?? defaultCacheDir(),
      }),
    );
    const initrd = await step(
      "initramfs",
      () =>
        buildInitramfs({
          kernelTree: kernel,
          modules: spec.kernel.modules,
          outPath: join(work, "initrd.img"),
        }),
      (r) => r.path,
    );
    // Secure Boot: GRUB checks these detached signatures before it runs the
    // kernel and the initrd (src/bootloader/README.md, "Secure Boot").
    const bootSignatures = sbKeys
      ? await step("boot signatures", async () => {
          const sigs = {
            vmlinuz: join(work, signatureName("vmlinuz")),
            initrd: join(work, signatureName("initrd.img")),
            initrdCpio: join(work, INITRD_CPIO_SIGNATURE),
          };
          const initrdBytes = await readFile(initrd.path);
          await writeFile(sigs.vmlinuz, detachedSignature(await readFile(kernel.vmlinuz), sbKeys));
          await writeFile(sigs.initrd, detachedSignature(initrdBytes, sbKeys));
          await writeFile(sigs.initrdCpio, detachedSignature(gunzipSync(initrdBytes), sbKeys));
          return sigs;
        })
      : undefined;

    const rootDir = join(work, "rootfs");
    const pseudoPath = join(work, "rootfs.pseudo");
    const { layers, init, mode } = await step("rootfs", async () => {
      // The spec's layers first: what they installed decides the init flow.
      const own = await applyLayers(spec, rootDir, {
        log,
        cacheDir: o.cacheDir ?? defaultCacheDir(),
      });
      const init = detectInit(own.tree);
      const mode = updateMode(spec, init);
      log.info(
        { init: init.kind, updateMode: mode },
        `init: ${init.kind}; the update check runs as a ${mode}`,
      );
      const system = await systemLayers({
        spec,
        work,
        kernel,
        vmlinuz: kernel.vmlinuz,
        initrd: initrd.path,
        ...(bootSignatures ? { bootSignatures } : {}),
        trusted,
        init,
        mode,
        tree: own.tree,
        log,
      });
      const layers = await applyLayers({ rootfs: { layers: system } }, rootDir, {
        log,
        pseudoFilePath: pseudoPath,
        tree: own.tree,
        firstIndex: spec.rootfs.layers.length,
      });
      refuseHostState(rootDir);
      return { layers, init: init.kind, mode };
    });

    const squashfsPath = join(work, "rootfs.squashfs");
    await step(
      "squashfs",
      () =>
        buildSquashfs({
          sourceDir: rootDir,
          outPath: squashfsPath,
          compression: spec.rootfs.compression,
          ...(layers.pseudoFile ? { pseudoFile: layers.pseudoFile } : {}),
          ...(o.onProgress
            ? {
                onProgress: (done: number, total: number) =>
                  o.onProgress?.({ step: "squashfs", done, total }),
              }
            : {}),
        }),
      () => squashfsPath,
    );
    const slot = await step(
      "slot image",
      () =>
        buildSlotImage({
          squashfsPath,
          outPath: join(work, "slot.img"),
          maxBytes: spec.disk.slotSizeBytes,
        }),
      (r) => r.path,
    );
    await rm(squashfsPath, { force: true });

    const espPath = join(work, "esp.img");
    let slotBoot: { file: Uint8Array; sig: Uint8Array } | undefined;
    await step(
      "esp",
      async () => {
        const efi = join(work, "BOOTX64.EFI");
        await buildGrubEfi(
          efi,
          grubConfig({ cmdline: spec.kernel.cmdline, secureBoot: sbKeys !== undefined }),
          sbKeys,
        );
        const image = {
          rootHash: slot.verity.rootHash,
          verity: formatSlotVerity(slot.verity),
          version: spec.version,
        };
        const state = initialBootState(image, spec.update.goodSlotTries);
        // Secure Boot: slot A's signed boot file (root hash, verity, version),
        // and slot B's, signed but setting nothing until an update writes the
        // bundle's in its place (both padded to one size: src/bootloader
        // README.md, "Secure Boot", "Updates").
        const rootFiles: { name: string; data: Uint8Array }[] = [];
        if (sbKeys) {
          slotBoot = signedSlotBootFile(slotBootFile(image), sbKeys);
          const empty = signedSlotBootFile(EMPTY_SLOT_BOOT_FILE, sbKeys);
          for (const [name, f] of [
            [SLOT_BOOT_FILES.A, slotBoot],
            [SLOT_BOOT_FILES.B, empty],
          ] as const)
            rootFiles.push({ name, data: f.file }, { name: `${name}.SIG`, data: f.sig });
        }
        await buildEsp({
          outPath: espPath,
          sizeBytes: spec.disk.espSizeBytes,
          efiPath: efi,
          env: encodeEnv(bootStateToEnv(state)),
          volumeId: volumeId(spec.name),
          rootFiles,
        });
      },
      () => espPath,
    );

    const statePath = join(work, "state.img");
    await step(
      "state",
      () =>
        buildStateFs({
          outPath: statePath,
          sizeBytes: spec.disk.stateSizeBytes,
          uuidSeed: spec.name,
        }),
      () => statePath,
    );

    const diskPath = join(work, "disk.img");
    const table = await step(
      "disk",
      () =>
        assembleDisk({
          outPath: diskPath,
          diskGuidSeed: spec.name,
          partitions: abforgePartitions({
            espBytes: spec.disk.espSizeBytes,
            slotBytes: spec.disk.slotSizeBytes,
            stateBytes: spec.disk.stateSizeBytes,
            espImage: espPath,
            slotAImage: slot.path,
            stateImage: statePath,
          }),
        }),
      () => diskPath,
    );
    await rm(espPath, { force: true });
    await rm(statePath, { force: true });

    const createdAt = new Date((sourceDateEpoch() || Math.floor(Date.now() / 1000)) * 1000)
      .toISOString()
      .replace(/\.\d{3}Z$/, "Z");
    const bundleName = `${spec.name}-${spec.version}.bundle`;
    const bundlePath = join(work, bundleName);
    const written = await step(
      "bundle",
      async () =>
        writeBundle({
          outPath: bundlePath,
          key,
          slotImagePath: slot.path,
          manifest: {
            formatVersion: spec.update.bundleFormat,
            name: spec.name,
            compatible: spec.compatible,
            version: spec.version,
            createdAt,
            slotImage: await hashSlotImage(
              slot.path,
              spec.update.bundleFormat === 2 ? DEFAULT_CDC : undefined,
            ),
            verity: slot.verity,
            ...(slotBoot
              ? {
                  secureBoot: {
                    slotFile: Buffer.from(slotBoot.file).toString("base64"),
                    slotSig: Buffer.from(slotBoot.sig).toString("base64"),
                  },
                }
              : {}),
          },
        }),
      () => bundlePath,
    );
    await rm(slot.path, { force: true });

    // The disk's other forms, each converted and checked in the work directory.
    const outputs: DiskOutput[] = [];
    const formats: readonly DiskFormat[] = o.formats ?? ["raw"];
    for (const format of formats.includes("raw") ? formats : ["raw" as const, ...formats]) {
      outputs.push(
        await step(
          `format ${format}`,
          () =>
            writeDiskFormat({
              format,
              diskPath,
              workDir: work,
              name: spec.name,
              version: spec.version,
              mtime: sourceDateEpoch(),
            }),
          (r) => (format === "raw" ? diskPath : join(work, r.file)),
        ),
      );
    }

    const toolsAfter = toolTimeMs();
    const toolMs: Record<string, number> = {};
    for (const [tool, ms] of toolsAfter) {
      const d = ms - (toolsBefore.get(tool) ?? 0);
      if (d > 0) toolMs[tool] = Math.round(d);
    }
    const report: BuildReport = {
      name: spec.name,
      version: spec.version,
      compatible: spec.compatible,
      createdAt,
      kernel: {
        version: kernel.version,
        package: kernel.package ? `${kernel.package.name}=${kernel.package.version}` : null,
      },
      init,
      updateMode: mode,
      slotImage: {
        size: written.manifest.slotImage.size,
        sha256: written.manifest.slotImage.sha256,
      },
      verity: slot.verity,
      bundle: {
        file: bundleName,
        size: (await stat(bundlePath)).size,
        sha256: (await fileDigest(bundlePath)).sha256,
        keyId: written.manifest.keyId,
      },
      disk: { file: "disk.img", size: (await stat(diskPath)).size, table: tableToJson(table) },
      outputs,
      steps,
      totalMs: Math.round(performance.now() - started),
      toolMs,
    };
    const buildJsonTmp = join(work, "build.json");
    await writeFile(buildJsonTmp, `${JSON.stringify(report, null, 2)}\n`);
    if (o.signal?.aborted) throw interrupted(o, "outputs");

    // Everything succeeded: move the outputs into place (same filesystem: atomic renames).
    const result: BuildResult = {
      disk: join(o.outDir, "disk.img"),
      bundle: join(o.outDir, bundleName),
      buildJson: join(o.outDir, "build.json"),
      outputs: outputs.map((d) => ({ format: d.format, path: join(o.outDir, d.file) })),
      report,
    };
    for (const d of outputs) {
      if (d.format !== "raw") await rename(join(work, d.file), join(o.outDir, d.file));
    }
    await rename(diskPath, result.disk);
    await rename(bundlePath, result.bundle);
    await rename(buildJsonTmp, result.buildJson);
    log.info(
      {
        disk: result.disk,
        bundle: result.bundle,
        rootHash: slot.verity.rootHash,
        totalMs: report.totalMs,
      },
      `built ${spec.name} ${spec.version}`,
    );
    built = true;
    return result;
  } finally {
    await rm(work, { recursive: true, force: true });
    if (!built && createdOut) await removeEmptyDirs(o.outDir, createdOut);
  }
}

/** Create the output directory; a file in the way or an unwritable parent is a typed error. */
async function makeOutDir(outDir: string): Promise<string | undefined> {
  try {
    return await mkdir(outDir, { recursive: true });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "EEXIST" || code === "ENOTDIR") {
      throw new BuildError(
        "BUILD_FAILED",
        `output directory ${outDir}: a file is in the way (${code}); --out must name a directory`,
        { cause: err, details: { outDir } },
      );
    }
    if (code === undefined || !/^E[A-Z]+$/.test(code)) throw err;
    throw new ToolError(
      code === "ENOSPC" ? "DISK_FULL" : "IO_ERROR",
      `cannot create the output directory ${outDir}: ${(err as Error).message}`,
      { cause: err, details: { outDir, errno: code } },
    );
  }
}

function interrupted(o: BuildOptions, step: string, cause?: unknown): BuildError {
  const reason = String(o.signal?.reason ?? "abort");
  return new BuildError(
    "BUILD_INTERRUPTED",
    `build interrupted by ${reason} in the ${step} step: its tools were stopped, its temporary directory removed and ${o.outDir} left as it was`,
    { cause, details: { step, reason, outDir: o.outDir } },
  );
}

/**
 * Remove the temporary directories that builds killed outright left in
 * `outDir`: those whose builder (the pid in the name) no longer runs.
 */
async function removeStaleWork(outDir: string, log: Logger): Promise<void> {
  for (const name of await readdir(outDir)) {
    const pid = WORK_NAME.exec(name)?.[1];
    if (pid === undefined || (Number(pid) !== process.pid && processRuns(Number(pid)))) continue;
    const dir = join(outDir, name);
    await rm(dir, { recursive: true, force: true });
    log.info({ dir }, `removed ${dir}, left by an interrupted build`);
  }
}

function processRuns(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: it runs, as another user
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Remove `dir` and its parents up to `top` while they are empty (what the build created). */
async function removeEmptyDirs(dir: string, top: string): Promise<void> {
  for (let d = resolve(dir); ; d = dirname(d)) {
    try {
      await rmdir(d);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "ENOTEMPTY" || code === "EEXIST" || code === "ENOENT") return;
      throw err;
    }
    if (d === resolve(top) || d === dirname(d)) return;
  }
}

/** Milliseconds spent in external tools so far, all tools together. */
function sumToolMs(): number {
  let sum = 0;
  for (const ms of toolTimeMs().values()) sum += ms;
  return sum;
}

/** The public keys the image trusts: the spec's, or the public half of the signing key. */
async function trustedKeys(spec: ImageSpec, signingKey: KeyObject): Promise<KeyObject[]> {
  if (spec.update.keys.length === 0) return [publicKeyFromPrivate(signingKey)];
  const keys: KeyObject[] = [];
  for (const path of spec.update.keys) keys.push(await loadPublicKey(path));
  const signer = keyId(publicKeyFromPrivate(signingKey));
  if (!keys.some((k) => keyId(k) === signer)) {
    logger()
      .child({ module: "build" })
      .warn(
        { signer, trusted: keys.map(keyId) },
        "the image does not trust the key that signs this build's bundle",
      );
  }
  return keys;
}

/**
 * What abforge adds after the spec's layers, through the same safe layer code:
 * the mount points and the init flow's files (busybox: inittab, rc scripts
 * and services; systemd: units and their enabling links, systemd.ts), the
 * kernel and initramfs, the Node 24 runtime, the agent's code, its config,
 * keys and the release file.
 */
export async function systemLayers(o: {
  spec: ImageSpec;
  work: string;
  /** Needed when the spec asks for kernel.rootfsModules. */
  kernel?: KernelTree;
  vmlinuz: string;
  initrd: string;
  /** Secure Boot: the detached signatures GRUB checks, beside the kernel and initrd. */
  bootSignatures?: { vmlinuz: string; initrd: string; initrdCpio: string };
  trusted: KeyObject[];
  init: InitSystem;
  mode: UpdateMode;
  /** The staged spec layers (what systemd's networkd unit is looked up in). */
  tree: StagingTree;
  log?: Logger;
}): Promise<LayerSpec[]> {
  const sys = join(o.work, "system");
  for (const d of ROOTFS_MOUNT_POINTS) await mkdir(join(sys, d), { recursive: true });
  const agentRoot = join(sys, AGENT_DIR);
  await mkdir(agentRoot, { recursive: true });
  await linkTree(SOURCE_ROOT, agentRoot, [
    "package.json",
    "bin",
    "src",
    ...(await runtimePackages()),
  ]);

  const root = { uid: 0, gid: 0 };
  const text = (path: string, content: string, mode: number): FileEntry => ({
    path,
    content,
    mode,
    ...root,
  });
  const agent = agentFiles({ spec: o.spec, trustedKeys: o.trusted, init: o.init.kind });
  let initFiles: { path: string; content: string; mode: number }[];
  if (o.init.kind === "systemd") {
    const networkd = hasNetworkd(o.tree, o.init.libDir);
    if (!networkd)
      o.log?.warn(
        { libDir: o.init.libDir },
        "the image has no systemd-networkd: abforge sets up no network, the image's own must",
      );
    const config = agentConfigOf(o.spec, [], "systemd");
    const units = systemdFiles({ libDir: o.init.libDir, mode: o.mode, config, networkd });
    // The enabling links go in with the agent's code (the dir layer keeps symlinks).
    for (const l of units.links) {
      await mkdir(dirname(join(sys, l.path)), { recursive: true });
      await symlink(l.target, join(sys, l.path));
    }
    initFiles = units.files;
    if (o.spec.update.reboot.method === "kexec" && !hasKexec(o.tree))
      throw new BuildError(
        "SPEC_INVALID",
        "update.reboot.method is kexec but the image has no kexec tool: add kexec-tools to the debootstrap layer's packages",
        { details: { field: "update.reboot.method" } },
      );
  } else {
    const boot = (await rootfsBootFiles()).map((f) => ({
      path: `/${f.path}`,
      content: Buffer.from(f.data).toString("utf8"),
      mode: f.mode,
    }));
    initFiles = [...boot, ...(await serviceFiles())];
  }
  const modules: LayerSpec[] = [];
  if (o.spec.kernel.rootfsModules) {
    if (!o.kernel) throw new Error("systemLayers: kernel.rootfsModules needs the kernel tree");
    // Every module, for modprobe on the host (netfilter, bridges, file
    // systems), with the modules.dep the Debian package does not ship.
    const modRoot = join(o.work, "kernel-modules");
    await linkTree(dirname(o.kernel.modulesDir), join(modRoot, "lib", "modules"), [
      basename(o.kernel.modulesDir),
    ]);
    await run("depmod", ["-b", modRoot, o.kernel.version]);
    modules.push({
      kind: "dir",
      path: modRoot,
      origin: ORIGIN(`kernel ${o.kernel.version} modules`),
    });
  }
  return [
    ...modules,
    {
      kind: "host-binaries",
      binaries: [{ binary: NODE_BINARY, to: "/usr/bin/node" }],
      origin: ORIGIN("node runtime"),
    },
    // A busybox image that reboots by kexec gets the build host's kexec-tools
    // (README.md, "Reboot by kexec"); a systemd image carries Debian's package.
    ...(o.init.kind !== "systemd" && o.spec.update.reboot.method === "kexec"
      ? [
          {
            kind: "host-binaries" as const,
            binaries: [{ binary: "kexec", to: "/usr/sbin/kexec" }],
            origin: ORIGIN("kexec-tools (update.reboot.method: kexec)"),
          },
        ]
      : []),
    { kind: "dir", path: sys, origin: ORIGIN("abforge agent code") },
    {
      kind: "files",
      origin: ORIGIN("abforge boot flow and agent config"),
      files: [
        ...[...initFiles, ...agent].map((f) => text(f.path, f.content, f.mode)),
        { path: "/boot/vmlinuz", source: o.vmlinuz, mode: 0o644, ...root },
        { path: "/boot/initrd.img", source: o.initrd, mode: 0o644, ...root },
        ...(o.bootSignatures
          ? [
              {
                path: `/boot/${signatureName("vmlinuz")}`,
                source: o.bootSignatures.vmlinuz,
                mode: 0o644,
                ...root,
              },
              {
                path: `/boot/${signatureName("initrd.img")}`,
                source: o.bootSignatures.initrd,
                mode: 0o644,
                ...root,
              },
              {
                path: `/boot/${INITRD_CPIO_SIGNATURE}`,
                source: o.bootSignatures.initrdCpio,
                mode: 0o644,
                ...root,
              },
            ]
          : []),
      ],
    },
  ];
}

/** The debootstrap layers installed kexec-tools (`/usr/sbin/kexec` or `/sbin/kexec`). */
function hasKexec(tree: StagingTree): boolean {
  return ["usr/sbin/kexec", "sbin/kexec"].some((p) => {
    const rel = tree.resolve(p.split("/"), { followLast: true, create: false });
    return rel !== undefined && tree.exists(rel);
  });
}

/**
 * An image is for every host: it never holds one machine's identity or the
 * build machine's state (README.md, "What an image never holds").
 */
function refuseHostState(rootDir: string): void {
  const found = hostSpecificEntries(rootDir);
  if (found.length === 0) return;
  const shown = found.slice(0, 8).map((f) => `/${f}`);
  throw new BuildError(
    "ROOTFS_HOST_STATE",
    `the root filesystem holds host-specific state that every host of the image would share: ${shown.join(", ")}${found.length > shown.length ? ` and ${found.length - shown.length} more` : ""} (remove it in the layer that adds it; the debootstrap layer removes its own)`,
    { details: { entries: found } },
  );
}

/** The busybox image's network and agent services (its init runs /etc/init.d/S??* in order). */
async function serviceFiles(): Promise<{ path: string; content: string; mode: number }[]> {
  const asset = (name: string) => readFile(new URL(`./assets/${name}`, import.meta.url), "utf8");
  return [
    { path: "/etc/init.d/S10network", content: await asset("S10network"), mode: 0o755 },
    { path: "/etc/abforge/udhcpc.script", content: await asset("udhcpc.script"), mode: 0o755 },
    { path: "/etc/init.d/S50abforge-agent", content: await asset("S50abforge-agent"), mode: 0o755 },
  ];
}

/**
 * Mirror `entries` of `from` under `to`: directories made, symlinks
 * recreated, regular files hard-linked (copied when `to` is on another
 * filesystem). The tree is only read (by the dir layer) before it is removed,
 * so the links cost nothing and save copying the agent's code twice.
 */
async function linkTree(from: string, to: string, entries: readonly string[]): Promise<void> {
  const mirror = async (rel: string): Promise<void> => {
    const src = join(from, rel);
    const dst = join(to, rel);
    const st = await lstat(src);
    if (st.isDirectory()) {
      await mkdir(dst, { recursive: true, mode: st.mode & 0o7777 });
      for (const name of (await readdir(src)).sort()) await mirror(join(rel, name));
    } else if (st.isSymbolicLink()) {
      await symlink(await readlink(src), dst);
    } else if (st.isFile()) {
      await mkdir(dirname(dst), { recursive: true });
      await link(src, dst).catch(async (err: NodeJS.ErrnoException) => {
        if (err.code !== "EXDEV" && err.code !== "EPERM") throw err;
        await copyFile(src, dst);
      });
    }
  };
  // A nested package (node_modules/a/node_modules/b) is inside its parent's copy already.
  const inside = (e: string) => entries.some((p) => p !== e && e.startsWith(`${p}/`));
  for (const e of entries) if (!inside(e)) await mirror(e);
}

/** A FAT volume serial (8 hex digits) derived from the image name: same name, same ESP. */
function volumeId(name: string): string {
  let h = 0x811c9dc5;
  for (const c of Buffer.from(name)) h = Math.imul(h ^ c, 0x01000193) >>> 0;
  return h.toString(16).padStart(8, "0");
}
