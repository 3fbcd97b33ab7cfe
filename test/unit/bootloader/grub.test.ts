/** The generated grub.cfg: src/build/README.md, "GRUB". */
import { describe, expect, it } from "vitest";
import {
  EARLY_CONFIG,
  GRUB_MODULES,
  grubConfig,
  ustarSingleFile,
} from "../../../src/bootloader/grub.ts";
import { BOOT_TOKEN_VAR } from "../../../src/image/index.ts";

const cfg = grubConfig({ cmdline: "console=ttyS0,115200  quiet" });

function slotFunction(slot: "A" | "B"): string {
  const start = cfg.indexOf(`function abforge_try_${slot} {`);
  const end = cfg.indexOf("\n}\n", start);
  expect(start).toBeGreaterThan(0);
  return cfg.slice(start, end);
}

describe("grubConfig", () => {
  it("boots a good slot without touching its tries, counting the boot in X_boots (0-8 -> 1-9, saved first)", () => {
    for (const slot of ["A", "B"] as const) {
      const f = slotFunction(slot);
      const good = f.slice(f.indexOf(`if [ "$${slot}_good" = 1 ]; then`), f.indexOf("\n  elif"));
      expect(good).not.toContain(`${slot}_tries`);
      expect(good).toContain(`elif [ "$${slot}_boots" -lt "$good_tries" ]; then`);
      for (let n = 0; n <= 8; n++)
        expect(good).toMatch(
          new RegExp(
            `if \\[ "\\$${slot}_boots" = ${n} \\]; then\\n\\s+set ${slot}_boots=${n + 1}\\n`,
          ),
        );
      expect(good).not.toContain(`set ${slot}_boots=10`);
      expect(good).toMatch(
        new RegExp(
          `fi\\n\\s+save_env --file "\\$abforge_env" ${slot}_boots\\n\\s+set abforge_boot=1\\n`,
        ),
      );
      expect(f.indexOf(`save_env --file "$abforge_env" ${slot}_boots`)).toBeLessThan(
        f.indexOf("linux "),
      );
    }
  });

  it("passes over a good slot with good_tries unconfirmed boots, and boots any good slot in the last pass", () => {
    const f = slotFunction("B");
    expect(f).toMatch(
      /\n\s+else\n\s+echo "abforge: slot B was booted \$B_boots times without a confirmation; passing it over"\n\s+fi\n/,
    );
    expect(f).toMatch(
      /if \[ "\$B_good" = 1 \]; then\n\s+if \[ "\$abforge_last" = 1 \]; then\n\s+set abforge_boot=1\n/,
    );
    // in the last pass a slot that is not good is not tried again
    expect(f).toMatch(
      /elif \[ "\$abforge_last" = 1 \]; then\n\s+set abforge_boot=0\n\s+elif \[ "\$B_tries" = 1 \]/,
    );
    expect(cfg).toMatch(
      /fi\n\n# 5\.[^\n]*\n[^\n]*\nset abforge_last=1\nif \[ "\$order" = "B A" \]; then\n\s+abforge_try_B\n\s+abforge_try_A\nelse\n\s+abforge_try_A\n\s+abforge_try_B\nfi\n/,
    );
  });

  it("unrolls the decrement of tries 1..9, saving before booting and booting only when saved", () => {
    for (const slot of ["A", "B"] as const) {
      const f = slotFunction(slot);
      for (let n = 1; n <= 9; n++) {
        expect(f).toContain(
          `elif [ "$${slot}_tries" = ${n} ]; then\n    set ${slot}_tries=${n - 1}\n    if save_env --file "$abforge_env" ${slot}_tries; then set abforge_boot=1; fi`,
        );
      }
      expect(f).not.toContain(`"$${slot}_tries" = 10`);
      expect(f.indexOf("save_env")).toBeLessThan(f.indexOf("linux "));
    }
  });

  it("loads kernel and initrd from the slot's partition (A = gpt2, B = gpt3) with the contract's command line", () => {
    expect(slotFunction("A")).toContain(
      'linux ($abforge_disk,gpt2)/boot/vmlinuz abforge.slot=A "abforge.roothash=$A_roothash" "abforge.verity=$A_verity" "abforge.version=$A_version" "abforge.boottoken=$abforge_token" console=ttyS0,115200 quiet panic=5; then',
    );
    expect(slotFunction("A")).toContain("initrd ($abforge_disk,gpt2)/boot/initrd.img");
    expect(slotFunction("B")).toContain("linux ($abforge_disk,gpt3)/boot/vmlinuz abforge.slot=B");
  });

  it("falls through to the next slot when the kernel or initrd does not load, and skips an empty slot", () => {
    const f = slotFunction("B");
    expect(f).toMatch(
      /boot\n\s+fi\n\s+fi\n\s+echo "abforge: slot B: cannot load its kernel or initrd"/,
    );
    expect(f).toContain('if [ -z "$B_roothash" ]; then\n      echo "abforge: slot B is empty"');
  });

  it("restarts when the kernel loaded but the initrd did not: a slot on trial gives up its tries, a good one's boot stays counted (not in the last pass)", () => {
    const f = slotFunction("A");
    expect(f).toContain(
      'echo "abforge: slot A: cannot load its initrd"\n        if [ "$A_good" != 1 ]; then\n          set A_tries=0\n          save_env --file "$abforge_env" A_tries\n          echo "abforge: slot A: giving up its tries, restarting"\n          reboot\n        elif [ "$abforge_last" != 1 ]; then\n          echo "abforge: slot A: restarting (this boot is counted as unconfirmed)"\n          reboot\n        fi',
    );
  });

  it("follows the order, then prints the contract's line and halts", () => {
    expect(cfg).toMatch(
      /if \[ "\$order" = "B A" \]; then\n\s+abforge_try_B\n\s+abforge_try_A\nelse\n\s+abforge_try_A\n\s+abforge_try_B\nfi\n/,
    );
    expect(cfg.trimEnd().endsWith('echo "abforge: no bootable slot"\nhalt')).toBe(true);
  });

  it("loads only the boot-state variables from /GRUBENV on the ESP it was started from", () => {
    expect(cfg).toContain(`regexp --set=1:abforge_esp '^\\((.*)\\)' "$cmdpath"`);
    expect(cfg).toContain(
      'load_env --file "$abforge_env" order good_tries A_tries A_good A_boots A_roothash A_verity A_version B_tries B_good B_boots B_roothash B_verity B_version',
    );
    // a block without the newer variables: 3 unconfirmed boots, none counted yet
    expect(cfg).toContain("set good_tries=3\n");
    expect(cfg).toContain('set A_boots=0\nset A_roothash=""');
  });

  it("saves this boot's token (the firmware clock, YYYYMMDDhhmmss) in the boot disk's block before any slot, and passes only a saved one", () => {
    expect(GRUB_MODULES).toContain("datehook");
    const token = cfg.slice(cfg.indexOf("function abforge_two_digits"), cfg.indexOf("# 3."));
    expect(cfg.indexOf("load_env")).toBeLessThan(cfg.indexOf("function abforge_two_digits"));
    expect(cfg.indexOf("# 3.")).toBeLessThan(cfg.indexOf("function abforge_try_A"));
    expect(token).toContain('set abforge_token=""\nset abforge_t="$YEAR"\n');
    for (const v of ["MONTH", "DAY", "HOUR", "MINUTE", "SECOND"])
      expect(token).toContain(`abforge_two_digits "$${v}"\n`);
    expect(token).toContain(`if [ "$1" -lt 10 ]; then\n    set abforge_t="\${abforge_t}0$1"`);
    expect(token).toContain(
      `if regexp '^[0-9]{14}$' "$abforge_t"; then\n  set ${BOOT_TOKEN_VAR}="$abforge_t"\n  if save_env --file "$abforge_env" ${BOOT_TOKEN_VAR}; then\n    set abforge_token="$${BOOT_TOKEN_VAR}"\n  fi\nfi`,
    );
    // the token is not loaded from the block: each boot makes its own
    expect(cfg).not.toMatch(/load_env[^\n]*boot_token/);
  });

  it("refuses a command line that GRUB script would misread", () => {
    for (const bad of [`quiet "x`, "a;halt", "x=$y", "{x}", "a\\b"]) {
      expect(() => grubConfig({ cmdline: bad })).toThrow(
        expect.objectContaining({ code: "GRUB_BAD_CMDLINE" }),
      );
    }
  });

  it("keeps the embedded config to rescue-parser commands", () => {
    for (const line of EARLY_CONFIG.trim().split("\n")) {
      expect(line).toMatch(/^(normal|echo|halt)\b/);
    }
  });
});

describe("ustarSingleFile", () => {
  it("writes a 512-byte header with a valid checksum, the data padded, and two zero blocks", () => {
    const data = new TextEncoder().encode("hello");
    const tar = ustarSingleFile("grub.cfg", data);
    expect(tar.length).toBe(512 + 512 + 1024);
    const header = tar.subarray(0, 512);
    const field = (o: number, n: number) =>
      new TextDecoder().decode(header.subarray(o, o + n)).replace(/\0.*$/s, "");
    expect(field(0, 100)).toBe("grub.cfg");
    expect(field(124, 12)).toBe("00000000005");
    expect(field(257, 6)).toBe("ustar");
    let sum = 0;
    for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 0x20 : header[i]!;
    expect(Number.parseInt(field(148, 8), 8)).toBe(sum);
    expect(new TextDecoder().decode(tar.subarray(512, 517))).toBe("hello");
    expect(tar.subarray(517).every((b) => b === 0)).toBe(true);
  });
});
