/**
 * The image's init (README.md, "Init: busybox or systemd"): which one the
 * spec's layers installed, how the update check runs under it, and for a
 * systemd image the units that take the place of busybox's init scripts —
 * the banner, growing the state partition, the after-boot confirmation, the
 * update check (a timer or a daemon) and DHCP through systemd-networkd.
 */
import { lstatSync, readFileSync } from "node:fs";
import { posix } from "node:path";
import { AGENT_DIR, type AgentConfig } from "../image/index.ts";
import { BuildError } from "./errors.ts";
import type { ImageSpec, UpdateMode } from "./spec/index.ts";
import type { StagingTree } from "./staging.ts";

export type InitKind = "systemd" | "busybox";

export type InitSystem =
  | { kind: "busybox" }
  | {
      kind: "systemd";
      /** Where systemd's binary lies, absolute: `/usr/lib` (usr-merged) or `/lib`; its units are under `<libDir>/systemd/system`. */
      libDir: string;
    };

/** systemd's binary, as a rootfs-relative path: `lib/systemd/systemd` or `usr/lib/systemd/systemd`. */
const SYSTEMD_BINARY = /^((?:usr\/)?lib)\/systemd\/systemd$/;

/**
 * The init of a staged rootfs: `/sbin/init` resolved inside the rootfs, as a
 * chroot would (every symlink, a usr-merged `/lib` included), is systemd's
 * binary, a regular file: systemd. Anything else (busybox's applet link, no
 * `/sbin/init` at all yet) is busybox, whose init files the build adds.
 */
export function detectInit(tree: StagingTree): InitSystem {
  const init = tree.resolve(["sbin", "init"], { followLast: true, create: false });
  const m = init === undefined ? null : SYSTEMD_BINARY.exec(init);
  if (!m || !init || !lstatSync(tree.abs(init), { throwIfNoEntry: false })?.isFile())
    return { kind: "busybox" };
  return { kind: "systemd", libDir: `/${m[1]}` };
}

/**
 * The spec's `update.mode`, else the init's default: `timer` for systemd (no
 * memory used between checks), `daemon` for busybox, which has no timers —
 * `timer` there is SPEC_INVALID naming the field.
 */
export function updateMode(spec: ImageSpec, init: InitSystem): UpdateMode {
  const m = spec.update.mode;
  if (!m) return init.kind === "systemd" ? "timer" : "daemon";
  if (m.value === "timer" && init.kind !== "systemd") {
    const at = `${m.origin.file}:${m.origin.line}:${m.origin.col}`;
    throw new BuildError(
      "SPEC_INVALID",
      `${at}: update.mode: "timer" needs systemd as the image's init, and the layers' /sbin/init is not systemd (busybox init has no timers); use "daemon" or leave update.mode out`,
      { details: { field: "update.mode", source: m.origin } },
    );
  }
  return m.value;
}

export interface SystemdFile {
  /** Absolute path in the rootfs. */
  path: string;
  content: string;
  mode: number;
}

export interface SystemdLink {
  /** Absolute path in the rootfs of the symlink. */
  path: string;
  target: string;
}

export interface SystemdUnitsOptions {
  /** systemd's lib directory in the image (`InitSystem.libDir`). */
  libDir: string;
  mode: UpdateMode;
  /** The image's agent config: the timer's interval and random delay are its poll timing. */
  config: Pick<AgentConfig, "pollIntervalMs" | "pollJitterMs">;
  /** The image has systemd-networkd (its unit): enable it, with DHCP on Ethernet. */
  networkd: boolean;
}

/** The abforge units of a systemd image (README.md, "systemd images"). */
export const UNITS = {
  banner: "abforge-banner.service",
  growState: "abforge-grow-state.service",
  markGood: "abforge-mark-good.service",
  agent: "abforge-agent.service",
  update: "abforge-update.service",
  timer: "abforge-update.timer",
} as const;

/** The script abforge-banner.service runs. */
export const BANNER_SCRIPT = `${AGENT_DIR}/libexec/abforge-banner`;
export const NETWORK_FILE = "80-abforge-dhcp.network";

function asset(name: string): string {
  return readFileSync(new URL(`./assets/systemd/${name}`, import.meta.url), "utf8");
}

/**
 * The timer of `mode: timer`: a check `pollIntervalMs ± pollJitterMs` after
 * the previous one ended, as the daemon sleeps between checks
 * (OnUnitInactiveSec = interval − jitter, RandomizedDelaySec = 2 × jitter,
 * uniform), the first one soon after boot (and after mark-good: the service
 * is ordered after it). No Persistent=: it applies to calendar timers only.
 */
export function updateTimer(config: SystemdUnitsOptions["config"]): string {
  const { pollIntervalMs: interval, pollJitterMs: jitter } = config;
  return [
    '# abforge (src/build/README.md, "systemd images"; update.mode: timer): one',
    "# abforge-update.service run per interval, with a random delay, so a fleet",
    "# does not check all at once; nothing runs (or uses memory) between checks.",
    "[Unit]",
    `Description=abforge: an update check every ${interval} ms (± ${jitter} ms)`,
    "",
    "[Timer]",
    "OnBootSec=1s",
    `OnUnitInactiveSec=${interval - jitter}ms`,
    `RandomizedDelaySec=${2 * jitter}ms`,
    "AccuracySec=1s",
    `Unit=${UNITS.update}`,
    "",
    "[Install]",
    "WantedBy=timers.target",
    "",
  ].join("\n");
}

/**
 * The files and the enabling symlinks of a systemd image. The links live in
 * `<libDir>/systemd/system/*.wants/`, inside the read-only image, not in
 * `/etc`: `/etc` is an overlay whose upper directory is on the state
 * partition, where an operator's `systemctl disable` (a whiteout) would
 * outlive every update; from `/usr` each image enables its own units, and
 * `systemctl mask` still overrides them.
 */
export function systemdFiles(o: SystemdUnitsOptions): {
  files: SystemdFile[];
  links: SystemdLink[];
} {
  const unitDir = posix.join(o.libDir, "systemd/system");
  const unit = (name: string, content = asset(name)): SystemdFile => ({
    path: `${unitDir}/${name}`,
    content,
    mode: 0o644,
  });
  const files: SystemdFile[] = [
    { path: BANNER_SCRIPT, content: asset("abforge-banner"), mode: 0o755 },
    unit(UNITS.banner),
    unit(UNITS.growState),
    unit(UNITS.markGood),
  ];
  const wants = (target: string, name: string): SystemdLink => ({
    path: `${unitDir}/${target}.wants/${name}`,
    target: `../${name}`,
  });
  const links: SystemdLink[] = [
    wants("sysinit.target", UNITS.banner),
    wants("multi-user.target", UNITS.growState),
    wants("multi-user.target", UNITS.markGood),
  ];
  if (o.mode === "timer") {
    files.push(unit(UNITS.update), unit(UNITS.timer, updateTimer(o.config)));
    links.push(wants("timers.target", UNITS.timer));
  } else {
    files.push(unit(UNITS.agent));
    links.push(wants("multi-user.target", UNITS.agent));
  }
  if (o.networkd) {
    files.push({
      path: posix.join(o.libDir, "systemd/network", NETWORK_FILE),
      content: asset(NETWORK_FILE),
      mode: 0o644,
    });
    // What `systemctl enable systemd-networkd` links, but wait-online: an
    // offline host's wait-online fails its unit, and the no-failed-units
    // check would then refuse every release.
    links.push(
      wants("multi-user.target", "systemd-networkd.service"),
      wants("sockets.target", "systemd-networkd.socket"),
    );
  }
  return { files, links };
}

/** Whether the staged image has systemd-networkd's unit under `libDir`. */
export function hasNetworkd(tree: StagingTree, libDir: string): boolean {
  const parts = posix.join(libDir, "systemd/system/systemd-networkd.service").split("/");
  const rel = tree.resolve(parts, { followLast: true, create: false });
  return rel !== undefined && lstatSync(tree.abs(rel), { throwIfNoEntry: false }) !== undefined;
}
