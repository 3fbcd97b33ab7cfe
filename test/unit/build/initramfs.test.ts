/**
 * The initramfs /init script's own logic (src/build/README.md, "initramfs
 * /init"), run under the host's busybox sh: the script is sourced (so `main`
 * does not run) and its functions are called. `fail` only panics as PID 1.
 */
import { spawnSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { initScript, parseLdd, sourceDateEpoch } from "../../../src/build/initramfs.ts";
import { tempDir } from "../../helpers/tmp.ts";

const dir = tempDir();
const script = join(dir, "init");
writeFileSync(script, await initScript());

function sh(body: string): { status: number; out: string } {
  const r = spawnSync("busybox", ["sh", "-c", `. ${script}\n${body}`], { encoding: "utf8" });
  return { status: r.status ?? 128, out: r.stdout + r.stderr };
}

const HASH = "0123456789abcdef".repeat(4);

describe("/init: parse_cmdline", () => {
  it("reads the four abforge.* parameters among others", () => {
    const r = sh(
      `parse_cmdline "console=ttyS0 abforge.slot=B abforge.roothash=${HASH} abforge.verity=2560:2561:00ff abforge.version=1.2.3 panic=5"
echo "$slot|$roothash|$data_blocks|$hash_start|$salt|$version"`,
    );
    expect(r.status).toBe(0);
    expect(r.out).toBe(`B|${HASH}|2560|2561|00ff|1.2.3\n`);
  });

  it("takes an empty salt as '-' (dm-verity's no-salt)", () => {
    const r = sh(
      `parse_cmdline "abforge.slot=A abforge.roothash=${HASH} abforge.verity=8:9:"; echo "$salt"`,
    );
    expect(r.out).toBe("-\n");
  });

  it.each([
    [
      "abforge.slot=C",
      /abforge-initramfs: abforge\.slot="C" on the kernel command line: expected A or B/,
    ],
    [`abforge.slot=A abforge.roothash=XYZ`, /abforge\.roothash="XYZ": expected lowercase hex/],
    [`abforge.slot=A abforge.roothash=${HASH} abforge.verity=x:1:00`, /abforge\.verity="x:1:00"/],
    [
      `abforge.slot=A abforge.roothash=${HASH} abforge.verity=1:2:zz`,
      /the salt must be lowercase hex/,
    ],
    [`abforge.slot=A abforge.roothash=${HASH} abforge.verity=1:2:00:4`, /expected <dataBlocks>/],
  ])("refuses %s with one clear line, then gives up", (cmdline, message) => {
    const r = sh(`parse_cmdline "${cmdline}"; echo not-reached`);
    expect(r.status).toBe(1);
    expect(r.out).toMatch(message);
    expect(r.out).toMatch(/abforge-initramfs: giving up: kernel panic/);
    expect(r.out).not.toMatch(/not-reached/);
  });
});

describe("/init: find_part", () => {
  const sys = join(dir, "sys");
  const part = (dev: string, name: string) => {
    mkdirSync(join(sys, dev), { recursive: true });
    writeFileSync(
      join(sys, dev, "uevent"),
      `MAJOR=254\nMINOR=1\nDEVNAME=${dev}\nDEVTYPE=partition\nPARTN=1\nPARTNAME=${name}\n`,
    );
  };
  part("vda1", "esp");
  part("vda2", "abforge-A");
  part("vda3", "abforge-AB");
  part("vda4", "state");

  it("finds a partition by its exact GPT name", () => {
    expect(sh(`find_part abforge-A ${sys}`).out).toBe("vda2\n");
    expect(sh(`find_part state ${sys}`).out).toBe("vda4\n");
  });

  it("fails for a name no partition has", () => {
    const r = sh(`find_part abforge-B ${sys} || echo none`);
    expect(r.out).toBe("none\n");
  });
});

describe("helpers", () => {
  it("parseLdd keeps resolved paths and the loader", () => {
    const out = `\tlinux-vdso.so.1 (0x00007ffd)\n\tlibdevmapper.so.1.02.1 => /lib/x86_64-linux-gnu/libdevmapper.so.1.02.1 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n`;
    expect(parseLdd(out)).toEqual([
      "/lib/x86_64-linux-gnu/libdevmapper.so.1.02.1",
      "/lib64/ld-linux-x86-64.so.2",
    ]);
  });

  it("sourceDateEpoch reads SOURCE_DATE_EPOCH, defaults to 0, refuses junk", () => {
    expect(sourceDateEpoch({})).toBe(0);
    expect(sourceDateEpoch({ SOURCE_DATE_EPOCH: "1700000000" })).toBe(1_700_000_000);
    expect(() => sourceDateEpoch({ SOURCE_DATE_EPOCH: "yesterday" })).toThrow(/SOURCE_DATE_EPOCH/);
  });
});
