/**
 * Reboot by kexec (issue 13, "kexec"; src/updater/README.md, "Reboot by
 * kexec"), in one VM session: demo 1.0.0 built with `update.reboot.method:
 * kexec` and one try installs 2.0.0 into B and enters it by kexec — no GRUB
 * between the agent's reboot decision and the new kernel's banner, the try
 * counted in the boot state before the jump, the command line GRUB would have
 * built, a fresh boot token — and marks it good. Then 3.0.0, whose health check
 * fails, is entered by kexec too; the agent reboots through the firmware, GRUB
 * finds A's one try spent, boots 2.0.0, and the agent records the rollback.
 */
import { afterAll, describe, expect, it } from "vitest";
import { PROMPT, publishBundle, type ServedRepo } from "../../qemu/fleet.ts";
import type { Vm } from "../../qemu/vm.ts";
import { slotCmdline, withBootDisk } from "../../src/bootloader/index.ts";
import { freshDisk, image, SIGNING_KEY } from "./fixtures.ts";
import { banner, bootState, bootWithRepo } from "./scenarios.ts";

// A poll (30 s), a download and a boot under TCG on a busy 2-core host: be generous.
const BOOT_MS = 600_000;
/** What a boot through the firmware prints before the kernel: OVMF's boot manager, GRUB's banner and its lines (grub.cfg). */
const GRUB_LINE = /BdsDxe:|Welcome to GRUB|abforge: (?:booting|skipping) slot/;

let vm: Vm | undefined;
let server: ServedRepo | undefined;

afterAll(async () => {
  await vm?.kill();
  server?.stop();
});

/** The guest's /proc/cmdline, read in its root shell. */
async function cmdline(v: Vm): Promise<string> {
  const r = await v.run("echo CMDLINE=$(cat /proc/cmdline)", { timeoutMs: 300_000 });
  const m = /^CMDLINE=(.*)$/m.exec(r.output);
  expect(m, r.output).not.toBeNull();
  return m![1]!.trim();
}

async function bootToken(disk: string): Promise<string | undefined> {
  const lines = await withBootDisk(disk, (d) => d.readEnv(), { readOnly: true });
  for (const l of lines) if (l.kind === "var" && l.name === "boot_token") return l.value;
  return undefined;
}

describe("reboot by kexec", () => {
  it("enters 2.0.0 by kexec and marks it good; an unhealthy 3.0.0 entered by kexec still rolls back through GRUB", {
    timeout: 2_400_000,
  }, async () => {
    const started = Date.now();
    const disk = freshDisk("kexecV1");
    const run = await bootWithRepo(disk, [image("kexecV2").bundle]);
    vm = run.vm;
    server = run.server;

    // 1.0.0 through the firmware and GRUB; the agent installs 2.0.0 into B.
    expect(await banner(vm, BOOT_MS)).toMatchObject({ slot: "A", version: "1.0.0" });
    expect(vm.console).toMatch(GRUB_LINE);
    const decided = (await vm.waitFor(/rebooting into slot B \(2\.0\.0\)/, { timeoutMs: BOOT_MS }))
      .index;
    const from = vm.mark();
    await vm.waitFor(/kexec: jumping into slot B \(2\.0\.0\); the boot is counted \(tries 0/, {
      timeoutMs: BOOT_MS,
      from,
    });
    expect(await banner(vm, BOOT_MS)).toMatchObject({ slot: "B", version: "2.0.0" });
    const entered = vm.mark();
    // No firmware, no GRUB between the decision and the new kernel's banner.
    const between = vm.console.slice(from, entered);
    expect(between).not.toMatch(GRUB_LINE);
    expect(between).not.toMatch(/kexec unavailable/);
    expect(decided).toBeGreaterThan(0);
    // The try was counted before the jump (one try: none left), B not good yet.
    let s = await bootState(disk);
    expect(s.order[0]).toBe("B");
    expect(s.slots.B).toMatchObject({ version: "2.0.0", tries: 0 });
    await vm.waitFor(/marked good/, { timeoutMs: BOOT_MS, from: entered });
    await vm.waitFor(PROMPT, { timeoutMs: BOOT_MS, from: entered });
    s = await bootState(disk);
    expect(s.slots.B).toMatchObject({ good: true, version: "2.0.0" });
    expect(s.slots.A).toMatchObject({ good: true, version: "1.0.0" });
    // The command line GRUB would have built for B, with the token saved on the disk.
    const kexeced = await cmdline(vm);
    const token = await bootToken(disk);
    expect(token).toMatch(/^\d{14}$/);
    expect(kexeced).toBe(
      slotCmdline({
        slot: "B",
        state: s.slots.B,
        bootToken: token!,
        cmdline: "console=ttyS0 quiet",
      }),
    );

    // 3.0.0 (health check fails) into A, entered by kexec too.
    await publishBundle(run.repoDir, image("kexecV3").bundle, SIGNING_KEY);
    await vm.waitFor(/rebooting into slot A \(3\.0\.0\)/, { timeoutMs: BOOT_MS, from: entered });
    const from3 = vm.mark();
    await vm.waitFor(/kexec: jumping into slot A \(3\.0\.0\)/, { timeoutMs: BOOT_MS, from: from3 });
    expect(await banner(vm, BOOT_MS)).toMatchObject({ slot: "A", version: "3.0.0" });
    expect(vm.console.slice(from3, vm.mark())).not.toMatch(GRUB_LINE);
    // Its health check fails: the agent reboots through the firmware; GRUB
    // finds A's one try spent and boots the good 2.0.0.
    await vm.waitFor(/health check[^\n]*fail/i, { timeoutMs: BOOT_MS, from: from3 });
    await vm.waitFor(/abforge: skipping slot A \(not good, no tries left\)/, {
      timeoutMs: BOOT_MS,
    });
    expect(await banner(vm, BOOT_MS)).toMatchObject({ slot: "B", version: "2.0.0" });
    const back = vm.mark();
    expect(vm.console.slice(from3, back).match(/abforge: booting slot/g)).toHaveLength(1);
    await vm.waitFor(/rollback/i, { timeoutMs: BOOT_MS, from: back });
    await vm.waitFor(/confirmed: slot B \(2\.0\.0\) is up; it boots first/, {
      timeoutMs: BOOT_MS,
      from: back,
    });
    s = await bootState(disk);
    expect(s.order).toEqual(["B", "A"]);
    expect(s.slots.A).toMatchObject({ good: false, tries: 0, version: "3.0.0" });
    expect(s.slots.B).toMatchObject({ good: true, version: "2.0.0" });

    // GRUB's own command line for the same slot: the kexec'd one but for
    // GRUB's BOOT_IMAGE= and this boot's token.
    await vm.waitFor(PROMPT, { timeoutMs: BOOT_MS, from: back });
    const grub = await cmdline(vm);
    expect(grub).toMatch(/^BOOT_IMAGE=\S+ abforge\.slot=B /);
    const grubToken = /abforge\.boottoken=(\d{14})/.exec(grub)?.[1];
    expect(grubToken).toBe(await bootToken(disk));
    expect(grub.replace(/^BOOT_IMAGE=\S+ /, "").replace(grubToken!, token!)).toBe(kexeced);
    const status = await vm.run(
      "echo STATUS=$(/usr/lib/abforge/bin/abforge agent status --json 2>/dev/null | tr -d '\\n')",
      { timeoutMs: 300_000 },
    );
    const line = /^STATUS=(\{.*\})$/m.exec(status.output);
    expect(line, status.output).not.toBeNull();
    const parsed = JSON.parse(line![1]!) as { rollbacks: { version: string }[] };
    expect(parsed.rollbacks.map((r) => r.version)).toContain("3.0.0");
    process.stderr.write(
      `kexec: the whole story in ${((Date.now() - started) / 1000).toFixed(0)} s\n`,
    );
  });
});
