/**
 * The image's init (src/build/README.md, "Init: busybox or systemd"): after
 * the spec's layers, a `/sbin/init` that resolves to systemd's binary gets
 * abforge's units and their enabling links (and none of busybox's init
 * files); anything else keeps busybox's. The staged tree is what the squashfs
 * is made of. The units are checked by the host's `systemd-analyze verify`
 * in a copy of the tree with the host's own units beside them.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import {
  cpSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readFileSync,
  readlinkSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { applyLayers } from "../../../src/build/layers.ts";
import { systemLayers } from "../../../src/build/pipeline.ts";
import { parseSpec } from "../../../src/build/spec/index.ts";
import { detectInit, updateMode } from "../../../src/build/systemd.ts";
import { AGENT_CONFIG_PATH, parseConfig } from "../../../src/image/index.ts";
import { tempDir } from "../../helpers/tmp.ts";

const DEBIAN_PROFILE = "# /etc/profile: system-wide .profile file for the Bourne shell\n";

/** A host directory shaped like a Debian root: usr-merged or not, with systemd as init or not. */
function imageDir(
  dir: string,
  o: { systemd: boolean; usrMerged: boolean; networkd?: boolean },
): string {
  const lib = o.usrMerged ? "usr/lib" : "lib";
  mkdirSync(join(dir, lib, "systemd/system"), { recursive: true });
  mkdirSync(join(dir, "usr/sbin"), { recursive: true });
  mkdirSync(join(dir, "etc"), { recursive: true });
  writeFileSync(join(dir, "etc/profile"), DEBIAN_PROFILE);
  if (o.usrMerged) {
    symlinkSync("usr/lib", join(dir, "lib"));
    symlinkSync("usr/sbin", join(dir, "sbin"));
  } else mkdirSync(join(dir, "sbin"));
  if (o.systemd) {
    writeFileSync(join(dir, lib, "systemd/systemd"), "\x7fELF", { mode: 0o755 });
    // Debian's link is absolute: /sbin/init -> /lib/systemd/systemd, through /lib -> usr/lib.
    symlinkSync(
      o.usrMerged ? "/lib/systemd/systemd" : "../lib/systemd/systemd",
      join(dir, "sbin/init"),
    );
  }
  if (o.networkd)
    writeFileSync(
      join(dir, lib, "systemd/system/systemd-networkd.service"),
      "[Service]\nExecStart=/lib/systemd/systemd-networkd\n",
    );
  return dir;
}

const specText = (layer: string, update = "") => `name: host
version: 1.0.0
compatible: host-x86_64
kernel: { path: /kernel }
rootfs: { layers: [${layer}] }
disk: { espSize: 64MiB, slotSize: 512MiB, stateSize: 128MiB }
update:
  repo: "http://10.0.2.2:8080/"
  pollIntervalMs: 600000${update}
`;

/** The spec's layers, the init found, then the pipeline's system layers into the same tree. */
async function stage(layer: string, update = "") {
  const work = tempDir("abforge-systemd-");
  const spec = parseSpec(specText(layer, update), join(work, "host.yaml"));
  const root = join(work, "rootfs");
  const own = await applyLayers(spec, root);
  const init = detectInit(own.tree);
  const mode = updateMode(spec, init);
  writeFileSync(join(work, "vmlinuz"), "kernel");
  writeFileSync(join(work, "initrd.img"), "initrd");
  const system = await systemLayers({
    spec,
    work,
    vmlinuz: join(work, "vmlinuz"),
    initrd: join(work, "initrd.img"),
    trusted: [generateKeyPairSync("ed25519").publicKey],
    init,
    mode,
    tree: own.tree,
  });
  await applyLayers({ rootfs: { layers: system } }, root, {
    tree: own.tree,
    firstIndex: spec.rootfs.layers.length,
    pseudoFilePath: join(work, "pseudo"),
  });
  return { root, init, mode, work };
}

const BUSYBOX_FILES = [
  "etc/inittab",
  "etc/init.d/rcS",
  "etc/init.d/rcK",
  "etc/init.d/S10network",
  "etc/init.d/S50abforge-agent",
  "etc/abforge/udhcpc.script",
];
const UNITS = "usr/lib/systemd/system";

const read = (root: string, path: string) => readFileSync(join(root, path), "utf8");
const link = (root: string, path: string) => readlinkSync(join(root, path));

/** `systemd-analyze verify` of the abforge units in a copy of the tree with the host's units beside them. */
function verify(root: string, unitDir: string, units: string[]) {
  const copy = tempDir("abforge-systemd-verify-");
  cpSync(root, copy, { recursive: true, verbatimSymlinks: true });
  const dir = join(copy, unitDir);
  // The host's units (targets, networkd) where the image would have Debian's.
  cpSync("/usr/lib/systemd/system", dir, { recursive: true, force: false, verbatimSymlinks: true });
  const run = (level: string) =>
    spawnSync(
      "systemd-analyze",
      ["verify", `--root=${copy}`, ...units.map((u) => join(dir, u)), "default.target"],
      { encoding: "utf8", env: { ...process.env, SYSTEMD_LOG_LEVEL: level } },
    );
  const r = run("info");
  return {
    status: r.status,
    // what verify says about our units (unknown keys, commands that are not there, ...)
    complaints: r.stderr.split("\n").filter((l) => /abforge/.test(l)),
    // systemd breaks an ordering cycle by dropping a job, and says so at debug level
    cycles: run("debug")
      .stderr.split("\n")
      .filter((l) => /ordering cycle/i.test(l)),
  };
}

describe("the image's init", () => {
  it("a usr-merged systemd image: units under /usr/lib, enabled there; no busybox file; the image's /etc/profile kept", async () => {
    const img = imageDir(tempDir(), { systemd: true, usrMerged: true, networkd: true });
    const { root, init, mode } = await stage(`{ dir: ${img} }`);
    expect(init).toEqual({ kind: "systemd", libDir: "/usr/lib" });
    expect(mode).toBe("timer");
    for (const f of BUSYBOX_FILES) expect(existsSync(join(root, f)), f).toBe(false);
    expect(read(root, "etc/profile")).toBe(DEBIAN_PROFILE);
    expect(lstatSync(join(root, "lib")).isSymbolicLink()).toBe(true);

    for (const u of [
      "abforge-banner.service",
      "abforge-grow-state.service",
      "abforge-mark-good.service",
      "abforge-update.service",
      "abforge-update.timer",
    ])
      expect(read(root, `${UNITS}/${u}`), u).toMatch(/^\[Unit\]$/m);
    expect(existsSync(join(root, UNITS, "abforge-agent.service"))).toBe(false);
    expect(link(root, `${UNITS}/sysinit.target.wants/abforge-banner.service`)).toBe(
      "../abforge-banner.service",
    );
    expect(link(root, `${UNITS}/multi-user.target.wants/abforge-mark-good.service`)).toBe(
      "../abforge-mark-good.service",
    );
    expect(link(root, `${UNITS}/multi-user.target.wants/abforge-grow-state.service`)).toBe(
      "../abforge-grow-state.service",
    );
    expect(link(root, `${UNITS}/timers.target.wants/abforge-update.timer`)).toBe(
      "../abforge-update.timer",
    );
    expect(link(root, `${UNITS}/multi-user.target.wants/systemd-networkd.service`)).toBe(
      "../systemd-networkd.service",
    );
    expect(read(root, "usr/lib/systemd/network/80-abforge-dhcp.network")).toMatch(
      /^Name=en\* eth\*\n[\s\S]*^DHCP=yes$/m,
    );
    // nothing enabled through /etc: its overlay's upper dir outlives updates
    expect(existsSync(join(root, "etc/systemd"))).toBe(false);

    // the timer: interval ± jitter (600000 ± 60000) after the last check ended
    const timer = read(root, `${UNITS}/abforge-update.timer`);
    expect(timer).toMatch(/^OnUnitInactiveSec=540000ms$/m);
    expect(timer).toMatch(/^RandomizedDelaySec=120000ms$/m);
    const update = read(root, `${UNITS}/abforge-update.service`);
    expect(update).toMatch(/^After=network-online.target abforge-mark-good.service$/m);
    expect(update).toMatch(
      /^ExecStart=\/usr\/lib\/abforge\/bin\/abforge agent check --config \/etc\/abforge\/agent.yaml$/m,
    );
    expect(read(root, `${UNITS}/abforge-mark-good.service`)).toMatch(
      /^ExecStart=\/usr\/lib\/abforge\/bin\/abforge agent mark-good --config \/etc\/abforge\/agent.yaml$/m,
    );
    expect(read(root, `${UNITS}/abforge-grow-state.service`)).toMatch(
      /^ExecStart=-\/usr\/lib\/abforge\/bin\/abforge disk grow-state$/m,
    );
    for (const u of ["abforge-mark-good.service", "abforge-update.service"])
      expect(read(root, `${UNITS}/${u}`)).toMatch(
        /^Environment=NODE_COMPILE_CACHE=\/var\/cache\/abforge\/node-compile-cache$/m,
      );

    // the agent reboots through systemd and checks that no unit failed
    const config = parseConfig(read(root, AGENT_CONFIG_PATH.slice(1)), AGENT_CONFIG_PATH);
    expect(config.rebootCommand).toEqual(["systemctl", "reboot"]);
    expect(config.builtinChecks).toEqual(["no-failed-units"]);

    const v = verify(root, UNITS, [
      "abforge-banner.service",
      "abforge-grow-state.service",
      "abforge-mark-good.service",
      "abforge-update.service",
      "abforge-update.timer",
    ]);
    expect(v.complaints).toEqual([]);
    expect(v.cycles).toEqual([]);
    expect(v.status).toBe(0);
  });

  it("mode daemon: abforge-agent.service (restarted), no timer; no cycle with multi-user.target", async () => {
    const img = imageDir(tempDir(), { systemd: true, usrMerged: true });
    const { root, mode } = await stage(`{ dir: ${img} }`, "\n  mode: daemon");
    expect(mode).toBe("daemon");
    const agent = read(root, `${UNITS}/abforge-agent.service`);
    expect(agent).toMatch(/^Restart=always$/m);
    expect(agent).toMatch(/^RestartSec=5$/m);
    expect(agent).toMatch(/^ExecStart=\/usr\/lib\/abforge\/bin\/abforge agent run --config /m);
    expect(link(root, `${UNITS}/multi-user.target.wants/abforge-agent.service`)).toBe(
      "../abforge-agent.service",
    );
    for (const u of ["abforge-update.timer", "abforge-update.service"])
      expect(existsSync(join(root, UNITS, u)), u).toBe(false);
    // no systemd-networkd in this image: no network file, no link to a missing unit
    expect(existsSync(join(root, "usr/lib/systemd/network/80-abforge-dhcp.network"))).toBe(false);
    expect(existsSync(join(root, UNITS, "sockets.target.wants"))).toBe(false);
    const v = verify(root, UNITS, ["abforge-agent.service", "abforge-mark-good.service"]);
    expect(v.complaints).toEqual([]);
    expect(v.cycles).toEqual([]);
  });

  it("a systemd image whose /lib is a directory: units under /lib/systemd/system", async () => {
    const img = imageDir(tempDir(), { systemd: true, usrMerged: false });
    const { root, init } = await stage(`{ dir: ${img} }`);
    expect(init).toEqual({ kind: "systemd", libDir: "/lib" });
    expect(existsSync(join(root, "lib/systemd/system/abforge-mark-good.service"))).toBe(true);
    expect(existsSync(join(root, "usr/lib/systemd/system"))).toBe(false);
  });

  it("no systemd behind /sbin/init: busybox's init files, the daemon, reboot; update.mode timer refused", async () => {
    // /sbin/init a link to busybox (as host-binaries makes it), /lib/systemd/systemd absent
    const img = tempDir();
    mkdirSync(join(img, "bin"));
    mkdirSync(join(img, "sbin"));
    writeFileSync(join(img, "bin/busybox"), "\x7fELF", { mode: 0o755 });
    symlinkSync("/bin/busybox", join(img, "sbin/init"));
    const { root, init, mode } = await stage(`{ dir: ${img} }`);
    expect(init).toEqual({ kind: "busybox" });
    expect(mode).toBe("daemon");
    for (const f of BUSYBOX_FILES) expect(existsSync(join(root, f)), f).toBe(true);
    expect(read(root, "etc/profile")).toMatch(/abforge:/);
    expect(existsSync(join(root, "usr/lib/systemd"))).toBe(false);
    const config = parseConfig(read(root, AGENT_CONFIG_PATH.slice(1)), AGENT_CONFIG_PATH);
    expect(config.rebootCommand).toEqual(["reboot"]);
    expect(config.builtinChecks).toEqual([]);

    const spec = parseSpec(specText(`{ dir: ${img} }`, "\n  mode: timer"), "/specs/host.yaml");
    expect(() => updateMode(spec, init)).toThrow(
      expect.objectContaining({
        code: "SPEC_INVALID",
        message: expect.stringMatching(
          /^\/specs\/host\.yaml:10:9: update\.mode: "timer" needs systemd as the image's init/,
        ),
      }),
    );
  });

  it("the banner: the line busybox rcS prints, from the kernel command line", () => {
    const dir = tempDir();
    const cmdline = join(dir, "cmdline");
    writeFileSync(
      cmdline,
      "console=ttyS0 abforge.slot=B abforge.roothash=ab12 abforge.verity=1:2:ff abforge.version=2.0.0 panic=5\n",
    );
    const script = new URL("../../../src/build/assets/systemd/abforge-banner", import.meta.url);
    expect(execFileSync("sh", [script.pathname, cmdline], { encoding: "utf8" })).toBe(
      "abforge: booted slot B version 2.0.0 roothash ab12\n",
    );
    // the same echo as rcS's, but to stdout (the unit's StandardOutput is the console)
    const rcS = readFileSync(new URL("../../../src/build/assets/rcS", import.meta.url), "utf8");
    const echo = /^echo "abforge: booted slot .*"/m.exec(rcS)?.[0];
    expect(echo).toBeDefined();
    expect(readFileSync(script, "utf8")).toContain(`${echo}\n`);
  });
});
