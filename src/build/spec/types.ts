/**
 * The typed image spec (src/build/README.md, "The spec"): what the spec
 * parser returns, with units in the names.
 */
import type { ConfirmPolicy, Issue, RebootConfig } from "../../image/index.ts";

export type Compression = "gzip" | "xz";

/** Where a value was written: file (as the caller named it), 1-based line and column. */
export interface SpecOrigin {
  file: string;
  line: number;
  col: number;
}

export interface LayerOrigin extends SpecOrigin {
  /** The layer as written, for messages: `tar base.tar.gz`, `dir overlay/`, `files (2)`. */
  label: string;
}

export interface TarLayer {
  kind: "tar";
  /** Absolute path: a tar file (plain or gzip) or an OCI image layout directory. */
  path: string;
  allowDevices: boolean;
  origin: LayerOrigin;
}
export interface DirLayer {
  kind: "dir";
  /** Absolute path of a directory copied into the rootfs, owned by root. */
  path: string;
  origin: LayerOrigin;
}
export interface FileEntry {
  /** Absolute path inside the rootfs. */
  path: string;
  mode: number;
  uid: number;
  gid: number;
  /** Exactly one of content and source (an absolute host path). */
  content?: string;
  source?: string;
}
export interface FilesLayer {
  kind: "files";
  files: FileEntry[];
  origin: LayerOrigin;
}
export interface HostBinary {
  /** A program name looked up on PATH, or an absolute host path. */
  binary: string;
  /** Absolute path inside the rootfs; default: the path the binary was found at. */
  to?: string;
}
export interface HostBinariesLayer {
  kind: "host-binaries";
  binaries: HostBinary[];
  origin: LayerOrigin;
}
export interface DebootstrapLayer {
  kind: "debootstrap";
  suite: string;
  variant: string;
  packages: string[];
  /** Default: the first Debian mirror configured for the host's apt. */
  mirror?: string;
  origin: LayerOrigin;
}
export type LayerSpec = TarLayer | DirLayer | FilesLayer | HostBinariesLayer | DebootstrapLayer;

/**
 * How the image runs the update check: `daemon` — `agent run`, always
 * running; `timer` — a systemd timer that runs one `agent check` per
 * interval (systemd images only).
 */
export type UpdateMode = "daemon" | "timer";
export const UPDATE_MODES: readonly UpdateMode[] = ["daemon", "timer"];

export interface HealthCheck {
  /** For logs; default: the command. */
  name?: string;
  /** Run with /bin/sh -c; healthy when it exits 0 within timeoutMs. */
  command: string;
  timeoutMs: number;
}

export interface ImageSpec {
  /** The spec file as the caller named it. */
  file: string;
  /** Every spec file that contributed, the farthest base first, `file` last. */
  specFiles: string[];
  name: string;
  version: string;
  compatible: string;
  kernel: {
    /** Exactly one of package (a Debian package) and path (absolute: boot/vmlinuz-*, lib/modules/*). */
    package?: string;
    path?: string;
    cmdline: string;
    modules: string[];
    /** Every module of the kernel in the rootfs at /lib/modules/<version>, with modules.dep (default false). */
    rootfsModules: boolean;
  };
  rootfs: { compression: Compression; layers: LayerSpec[] };
  disk: { espSizeBytes: number; slotSizeBytes: number; stateSizeBytes: number };
  update: {
    channel: string;
    repo: string;
    tries: number;
    /** Unconfirmed boots of a good slot before GRUB falls back to the other good slot (1-9). */
    goodSlotTries: number;
    /** When the agent confirms a boot of a good slot: once it started, or once the health checks pass. */
    confirm: ConfirmPolicy;
    /**
     * Absolute paths of public keys the image trusts besides the build's own
     * signing key (which the pipeline adds); may be empty.
     */
    keys: string[];
    healthChecks: HealthCheck[];
    pollIntervalMs: number;
    /**
     * The bundle format the build writes (src/bundle README.md, "Format
     * versions"): 1, which every agent reads, or 2, which adds the
     * content-defined chunks for delta installs (default 1).
     */
    bundleFormat: 1 | 2;
    /** When and how the agent reboots into an update (the agent config's `reboot:`). */
    reboot: RebootConfig;
    /**
     * As written; absent: by the image's init (`timer` for systemd, `daemon`
     * for busybox), decided once the layers are applied.
     */
    mode?: { value: UpdateMode; origin: SpecOrigin };
  };
  /**
   * The Secure Boot signing key and its certificate (absolute PEM paths), or
   * null: an image without Secure Boot (src/bootloader/README.md, "Secure Boot").
   */
  secureBoot: { keyPath: string; certPath: string } | null;
}

/** `not-found`: a referenced file is missing; `unsafe`: a tar layer entry that the layer step would refuse (LAYER_UNSAFE); `invalid`: anything else. */
export type SpecIssueKind = "invalid" | "not-found" | "unsafe";
export type SpecIssue = Issue<SpecIssueKind>;

export interface ParseSpecOptions {
  /** Texts of the extended bases, by absolute path (`path.resolve`). */
  bases?: ReadonlyMap<string, string>;
  /** Overrides `version` (the CLI's --version). */
  version?: string;
}
