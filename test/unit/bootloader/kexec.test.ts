// Booting a slot by kexec: src/bootloader/README.md, "Booting by kexec" — the
// command line GRUB builds for a slot, the count GRUB makes, the next token.
import { describe, expect, it } from "vitest";
import {
  activateSlot,
  type BootState,
  grubBoot,
  grubConfig,
  initialBootState,
  kexecBoot,
  markGood,
  markUnbootable,
  nextBootToken,
  type SlotName,
  slotCmdline,
  specCmdline,
} from "../../../src/bootloader/index.ts";
import { codeOf } from "../../helpers/errors.ts";
import { imageA, imageB } from "./images.ts";

/** A's 1.0.0 good and running; B written with 2.0.0 and activated with `tries`. */
function updated(tries: number): BootState {
  const s = markUnbootable(initialBootState(imageA), "B");
  return activateSlot(s, "B", { tries, ...imageB });
}

/** What GRUB's `linux` line passes for `slot`: grub.cfg's line with GRUB's variables substituted. */
function grubLinuxLine(cmdline: string, slot: SlotName, s: BootState, token: string): string {
  const cfg = grubConfig({ cmdline });
  const line = cfg
    .split("\n")
    .find((l) => l.includes(`/boot/vmlinuz abforge.slot=${slot}`))!
    .trim();
  const vars: Record<string, string> = {
    [`${slot}_roothash`]: s.slots[slot].rootHash,
    [`${slot}_verity`]: s.slots[slot].verity,
    [`${slot}_version`]: s.slots[slot].version,
    abforge_token: token,
  };
  const args = line
    .replace(/^if linux \S+ /, "")
    .replace(/; then$/, "")
    .replace(/\$([A-Za-z_]+)/g, (_, v: string) => vars[v] ?? `<unset ${v}>`)
    .replaceAll('"', "");
  return args;
}

describe("slotCmdline", () => {
  it("is the command line grub.cfg's linux line gives the slot, word for word", () => {
    const s = updated(2);
    for (const cmdline of ["console=ttyS0 quiet", "", "console=ttyS0,115200 root=x ro"]) {
      for (const slot of ["A", "B"] as const) {
        const ours = slotCmdline({
          slot,
          state: s.slots[slot],
          bootToken: "20261207210000",
          cmdline,
        });
        expect(ours).toBe(grubLinuxLine(cmdline, slot, s, "20261207210000"));
      }
    }
    expect(
      slotCmdline({ slot: "B", state: s.slots.B, bootToken: "", cmdline: "console=ttyS0 quiet" }),
    ).toBe(
      `abforge.slot=B abforge.roothash=${imageB.rootHash} abforge.verity=${imageB.verity} abforge.version=2.0.0 abforge.boottoken= console=ttyS0 quiet panic=5`,
    );
  });

  it("refuses an empty slot and a command line GRUB would not carry", () => {
    const s = initialBootState(imageA);
    expect(
      codeOf(() => slotCmdline({ slot: "B", state: s.slots.B, bootToken: "", cmdline: "" })),
    ).toBe("BOOT_REFUSED");
    for (const bad of ['console="x"', "a=$b", "abforge.slot=A"])
      expect(
        codeOf(() => slotCmdline({ slot: "A", state: s.slots.A, bootToken: "", cmdline: bad })),
      ).toBe("GRUB_BAD_CMDLINE");
  });
});

describe("specCmdline", () => {
  it("takes GRUB's BOOT_IMAGE=, the abforge.* keys and the closing panic=5 off a booted slot's command line", () => {
    const running = `BOOT_IMAGE=(hd0,gpt2)/boot/vmlinuz abforge.slot=A abforge.roothash=${imageA.rootHash} abforge.verity=${imageA.verity} abforge.version=1.0.0 abforge.boottoken=20261207205959 console=ttyS0 quiet panic=5\n`;
    expect(specCmdline(running)).toBe("console=ttyS0 quiet");
    // A kexec'd kernel's line has no BOOT_IMAGE=; the next kexec gets the same spec line.
    const kexeced = slotCmdline({
      slot: "B",
      state: updated(1).slots.B,
      bootToken: "20261207210102",
      cmdline: specCmdline(running),
    });
    expect(specCmdline(kexeced)).toBe("console=ttyS0 quiet");
    // A spec's own panic= earlier on the line stays; only GRUB's last word goes.
    expect(specCmdline("abforge.slot=A panic=30 quiet panic=5")).toBe("panic=30 quiet");
    expect(specCmdline("BOOT_IMAGE=/x abforge.slot=A panic=5")).toBe("");
  });
});

describe("kexecBoot", () => {
  it("counts the try of a slot on trial exactly as GRUB does, and a good slot's boot in its boots", () => {
    for (const tries of [1, 2, 3, 9]) {
      const s = updated(tries);
      const after = kexecBoot(s, "B");
      expect(after).toEqual(grubBoot(s).state);
      expect(after.slots.B).toMatchObject({ tries: tries - 1, good: false });
      expect(after.slots.A).toEqual(s.slots.A);
      expect(after.order).toEqual(["B", "A"]);
    }
    const good = markGood(updated(1), "B");
    expect(kexecBoot(good, "B").slots.B).toMatchObject({ good: true, boots: 1 });
  });

  it("refuses a slot GRUB would not boot now, and an empty one", () => {
    // A slot whose tries are spent: GRUB boots the good A, so a kexec into B is refused.
    const spent = kexecBoot(updated(1), "B");
    expect(codeOf(() => kexecBoot(spent, "B"))).toBe("BOOT_REFUSED");
    expect(codeOf(() => kexecBoot(updated(2), "A"))).toBe("BOOT_REFUSED");
    expect(codeOf(() => kexecBoot(initialBootState(imageA), "B"))).toBe("BOOT_REFUSED");
  });
});

describe("nextBootToken", () => {
  it("is the clock's UTC time in GRUB's YYYYMMDDhhmmss, always after the running boot's token", () => {
    const now = new Date("2026-12-07T21:05:09.750Z");
    expect(nextBootToken(now, null)).toBe("20261207210509");
    expect(nextBootToken(now, "20261207205959")).toBe("20261207210509");
    // The same second, or a clock behind the firmware's (an RTC in local time): one second on.
    expect(nextBootToken(now, "20261207210509")).toBe("20261207210510");
    expect(nextBootToken(now, "20261207235959")).toBe("20261208000000");
    expect(nextBootToken(now, "not-a-token")).toBe("20261207210509");
  });
});
