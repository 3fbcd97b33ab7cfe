/**
 * The image contract (src/image/README.md): the `abforge.*` keys that GRUB
 * writes are exactly those the initramfs reads, the verity text form, the
 * release file, and the name rules.
 */
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { grubConfig } from "../../../src/bootloader/index.ts";
import {
  BOOT_TOKEN_VAR,
  bootTokenFromCmdline,
  CMDLINE_KEYS,
  CMDLINE_PREFIX,
  cmdlineValue,
  formatSlotVerity,
  ImageError,
  isChannelName,
  isCompatibleName,
  parseRelease,
  parseSlotVerity,
  serializeRelease,
  slotFromCmdline,
} from "../../../src/image/index.ts";

const CONTRACT_KEYS = Object.values(CMDLINE_KEYS).sort();

/** Every distinct `abforge.<key>` written as `abforge.<key>=` in a text. */
function keysIn(text: string): string[] {
  return [
    ...new Set([...text.matchAll(/\babforge\.([a-z_]+)=/g)].map((m) => `abforge.${m[1]}`)),
  ].sort();
}

describe("kernel command line", () => {
  it("every key starts with the prefix a spec may not use", () => {
    for (const k of CONTRACT_KEYS) expect(k.startsWith(CMDLINE_PREFIX)).toBe(true);
  });

  it("the initramfs (init.sh) reads exactly the contract's keys", () => {
    // init.sh is a shell script that tests source as is; this keeps its key
    // names tied to the contract (a renamed or added key fails here).
    const script = readFileSync(
      new URL("../../../src/build/assets/init.sh", import.meta.url),
      "utf8",
    );
    expect(keysIn(script)).toEqual(CONTRACT_KEYS);
  });

  it("the boot token: grub.cfg saves it as the contract's variable, init.sh reads that variable", () => {
    const script = readFileSync(
      new URL("../../../src/build/assets/init.sh", import.meta.url),
      "utf8",
    );
    expect(script).toContain(`esp_env_var "\${4:-/dev}/$bd_esp" ${BOOT_TOKEN_VAR})`);
    expect(grubConfig({ cmdline: "" })).toContain(
      `save_env --file "$abforge_env" ${BOOT_TOKEN_VAR};`,
    );
    expect(bootTokenFromCmdline("abforge.slot=A abforge.boottoken=20261207121059 quiet")).toBe(
      "20261207121059",
    );
    for (const bad of ["abforge.boottoken=", "abforge.boottoken=2026", "quiet"])
      expect(bootTokenFromCmdline(bad)).toBeNull();
  });

  it("grub.cfg writes exactly the contract's keys", () => {
    expect(keysIn(grubConfig({ cmdline: "console=ttyS0" }))).toEqual(CONTRACT_KEYS);
  });

  it("reads a key's first value and the booted slot", () => {
    const line = "console=ttyS0 abforge.slot=B abforge.version=1.2.3 abforge.slot=A";
    expect(cmdlineValue(line, CMDLINE_KEYS.version)).toBe("1.2.3");
    expect(cmdlineValue(line, CMDLINE_KEYS.rootHash)).toBeUndefined();
    expect(slotFromCmdline(line)).toBe("B");
    expect(slotFromCmdline("abforge.slot=C")).toBeNull();
    expect(slotFromCmdline("quiet")).toBeNull();
  });
});

describe("verity text form", () => {
  it("formats <dataBlocks>:<hashStartBlock>:<saltHex> and parses it back", () => {
    const v = { dataBlocks: 2560, hashStartBlock: 2561, salt: "00ff" };
    expect(formatSlotVerity(v)).toBe("2560:2561:00ff");
    expect(parseSlotVerity("2560:2561:00ff")).toEqual(v);
    expect(parseSlotVerity("8:9:")).toEqual({ dataBlocks: 8, hashStartBlock: 9, salt: "" });
    for (const bad of [
      "",
      "0:1:00",
      "1:2:0",
      "1:2:ZZ",
      "1:2:00:3",
      "x:1:00",
      "99999999999999999:1:",
    ])
      expect(parseSlotVerity(bad)).toBeUndefined();
  });
});

describe("release", () => {
  it("round-trips and refuses what is not one", () => {
    const r = { name: "demo", version: "1.0.0", compatible: "demo-x86_64" };
    expect(parseRelease(serializeRelease(r), "release.json")).toEqual(r);
    expect(() => parseRelease("{", "r.json")).toThrow(ImageError);
    expect(() => parseRelease("null", "r.json")).toThrow(/r\.json: needs string fields/);
    expect(() => parseRelease('{"name":"a","version":1}', "r.json")).toThrow(ImageError);
  });
});

describe("name rules", () => {
  it("a channel is lowercase; a compatible string may carry case, + and :", () => {
    expect(isChannelName("stable")).toBe(true);
    expect(isChannelName("beta.2_x-1")).toBe(true);
    expect(isChannelName("Beta")).toBe(false);
    expect(isChannelName(".x")).toBe(false);
    expect(isChannelName(3)).toBe(false);
    expect(isCompatibleName("Pi:4+x.y_z-1")).toBe(true);
    expect(isCompatibleName("a/b")).toBe(false);
    expect(isCompatibleName("")).toBe(false);
  });
});
