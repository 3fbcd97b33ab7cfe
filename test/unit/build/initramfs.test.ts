/**
 * The initramfs /init script's own logic (src/build/README.md, "initramfs
 * /init"), run under the host's busybox sh: the script is sourced (so `main`
 * does not run) and its functions are called. `fail` only panics as PID 1.
 */
import { spawnSync } from "node:child_process";
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  realpathSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { buildEsp, encodeEnv } from "../../../src/bootloader/index.ts";
import { initScript, parseLdd, sourceDateEpoch } from "../../../src/build/initramfs.ts";
import { BOOT_TOKEN_VAR } from "../../../src/image/index.ts";
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

describe("/init: the boot disk, by the token GRUB saved on it", () => {
  const TOKEN = "20261207121059";
  const OLD = "20261207115959";

  /** An ESP as the build makes it (buildEsp: mkfs.vfat, /GRUBENV first, then the EFI image). */
  async function esp(name: string, sizeMiB: number, token?: string): Promise<string> {
    const vars = new Map([["order", "A B"]]);
    if (token) vars.set(BOOT_TOKEN_VAR, token);
    vars.set("A_good", "1");
    const efiPath = join(dir, "BOOTX64.EFI");
    writeFileSync(efiPath, "MZ not really GRUB");
    const outPath = join(dir, name);
    await buildEsp({
      outPath,
      sizeBytes: sizeMiB << 20,
      efiPath,
      env: encodeEnv(vars),
      volumeId: "0a0b0c0d",
    });
    return outPath;
  }

  it("reads a variable of /GRUBENV from the FAT32 ESP, with 512-byte and 4 KiB clusters", async () => {
    for (const mib of [64, 264]) {
      const path = await esp(`esp-${mib}.img`, mib, TOKEN);
      expect(sh(`esp_env_var ${path} ${BOOT_TOKEN_VAR}; esp_env_var ${path} order`).out).toBe(
        `${TOKEN}\nA B\n`,
      );
      expect(sh(`esp_env_var ${path} B_good; echo "[$?]"`).out).toBe("[0]\n");
    }
  });

  it("finds no /GRUBENV on what is not a FAT32 ESP", async () => {
    const junk = join(dir, "junk.img");
    writeFileSync(junk, Buffer.alloc(4096, 0x55));
    expect(sh(`esp_env_var ${junk} ${BOOT_TOKEN_VAR} || echo none`).out).toBe("none\n");
  });

  /**
   * Byte-identical abforge disks vda and vdb in a fake sysfs (partitions under
   * their disk, /sys/class/block links) with their partitions' "device nodes"
   * as files; each ESP holds the token given for its disk.
   */
  async function host(name: string, tokens: Record<string, string | undefined>) {
    const root = join(dir, name);
    const cls = join(root, "sys/class/block");
    const devs = join(root, "dev");
    mkdirSync(cls, { recursive: true });
    mkdirSync(devs, { recursive: true });
    for (const [disk, token] of Object.entries(tokens)) {
      const diskDir = join(root, "sys/devices/pci0000:00/virtio", disk, "block", disk);
      mkdirSync(diskDir, { recursive: true });
      writeFileSync(join(diskDir, "uevent"), `DEVNAME=${disk}\nDEVTYPE=disk\n`);
      symlinkSync(diskDir, join(cls, disk));
      for (const [n, partname] of ["esp", "abforge-A", "abforge-B", "state"].entries()) {
        const part = `${disk}${n + 1}`;
        mkdirSync(join(diskDir, part));
        writeFileSync(
          join(diskDir, part, "uevent"),
          `DEVNAME=${part}\nDEVTYPE=partition\nPARTN=${n + 1}\nPARTNAME=${partname}\n`,
        );
        symlinkSync(join(diskDir, part), join(cls, part));
        if (partname === "esp") copyFileSync(await espWith(token), join(devs, part));
        else writeFileSync(join(devs, part), "");
      }
    }
    return { cls, devs, dir: (disk: string) => realpathSync(join(cls, disk)) };
  }
  const esps = new Map<string, string>();
  async function espWith(token: string | undefined): Promise<string> {
    const key = token ?? "none";
    if (!esps.has(key)) esps.set(key, await esp(`esp-${key}.img`, 64, token));
    return esps.get(key)!;
  }

  it("takes the disk whose ESP holds this boot's token, first or second in sysfs", async () => {
    for (const booted of ["vda", "vdb"]) {
      const other = booted === "vda" ? "vdb" : "vda";
      const h = await host(`init-${booted}`, { [booted]: TOKEN, [other]: OLD });
      const r = sh(`boot_disk A ${TOKEN} ${h.cls} ${h.devs}; echo "[$?]"`);
      expect(r.out).toBe(`${h.dir(booted)}\n[0]\n`);
      expect(sh(`find_part abforge-A ${h.dir(booted)}`).out).toBe(`${booted}2\n`);
    }
  });

  it("none holds the token: status 1 (wait_boot_disk gives up); both: status 2, naming them", async () => {
    const none = await host("init-none", { vda: OLD, vdb: undefined });
    expect(sh(`boot_disk A ${TOKEN} ${none.cls} ${none.devs}; echo "[$?]"`).out).toBe("[1]\n");
    expect(
      sh(`WAIT_TENTHS=2; wait_boot_disk A ${TOKEN} ${none.cls} ${none.devs}; echo "[$?]"`).out,
    ).toBe("[1]\n");
    const both = await host("init-both", { vda: TOKEN, vdb: TOKEN });
    const r = sh(
      `out=$(boot_disk A ${TOKEN} ${both.cls} ${both.devs}); echo "[$?] $(names_of "$out")"`,
    );
    expect(r.out).toBe("[2] vda vdb\n");
  });

  it("without a token: the one disk with the slot's partition, and several are refused", async () => {
    const one = await host("init-one", { vdb: undefined });
    expect(sh(`boot_disk B "" ${one.cls} ${one.devs}; echo "[$?]"`).out).toBe(
      `${one.dir("vdb")}\n[0]\n`,
    );
    const two = await host("init-two", { vda: OLD, vdb: OLD });
    expect(sh(`boot_disk B "" ${two.cls} ${two.devs} >/dev/null; echo "[$?]"`).out).toBe("[2]\n");
  });

  it("parse_cmdline reads abforge.boottoken= (empty without one) and refuses a malformed one", () => {
    const base = `abforge.slot=A abforge.roothash=${HASH} abforge.verity=8:9:`;
    expect(sh(`parse_cmdline "${base} abforge.boottoken=${TOKEN}"; echo "[$boot_token]"`).out).toBe(
      `[${TOKEN}]\n`,
    );
    expect(sh(`parse_cmdline "${base}"; echo "[$boot_token]"`).out).toBe("[]\n");
    const r = sh(`parse_cmdline "${base} abforge.boottoken=2026"; echo not-reached`);
    expect(r.status).toBe(1);
    expect(r.out).toMatch(/abforge\.boottoken="2026": expected 14 digits/);
  });
});

describe("/init: merge_accounts, the image's new accounts into the host's changed /etc", () => {
  const lower = (d: string) => join(d, "lower");
  const upper = (d: string) => join(d, "upper");
  function setup(files: { lower: Record<string, string>; upper: Record<string, string> }): string {
    const d = mkdtempSync(join(dir, "accounts-"));
    mkdirSync(lower(d));
    mkdirSync(upper(d));
    for (const [n, t] of Object.entries(files.lower)) writeFileSync(join(lower(d), n), t);
    for (const [n, t] of Object.entries(files.upper)) writeFileSync(join(upper(d), n), t);
    return d;
  }

  it("appends the image's entries the host lacks, keeps the host's, and says which", () => {
    const d = setup({
      lower: {
        passwd:
          "root:x:0:0:root:/root:/bin/bash\nsshd:x:100:65534::/run/sshd:/usr/sbin/nologin\npodman:x:101:101::/nonexistent:/usr/sbin/nologin\n",
        group: "root:x:0:\npodman:x:101:\n",
        shadow: "root:*:19000:0:99999:7:::\npodman:!:19000::::::\n",
      },
      upper: {
        // the host added alice and changed root's shell; its group file lacks a final newline
        passwd:
          "root:x:0:0:root:/root:/bin/sh\nsshd:x:100:65534::/run/sshd:/usr/sbin/nologin\nalice:x:1000:1000::/home/alice:/bin/bash\n",
        group: "root:x:0:\nalice:x:1000:",
      },
    });
    const r = sh(`merge_accounts ${lower(d)} ${upper(d)}`);
    expect(r.status, r.out).toBe(0);
    expect(r.out).toBe("/etc/passwd: podman \n/etc/group: podman \n");
    expect(readFileSync(join(upper(d), "passwd"), "utf8")).toBe(
      "root:x:0:0:root:/root:/bin/sh\nsshd:x:100:65534::/run/sshd:/usr/sbin/nologin\nalice:x:1000:1000::/home/alice:/bin/bash\npodman:x:101:101::/nonexistent:/usr/sbin/nologin\n",
    );
    expect(readFileSync(join(upper(d), "group"), "utf8")).toBe(
      "root:x:0:\nalice:x:1000:\npodman:x:101:\n",
    );
    // shadow was never changed by the host: the overlay shows the image's, untouched
    expect(existsSync(join(upper(d), "shadow"))).toBe(false);
    expect(readdirSync(upper(d)).sort()).toEqual(["group", "passwd"]);
    // a second boot adds nothing
    expect(sh(`merge_accounts ${lower(d)} ${upper(d)}`).out).toBe("");
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
