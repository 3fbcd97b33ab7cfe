/** The GRUB config against grub-script-check, and the EFI image from grub-mkimage. */
import { execFileSync, spawnSync } from "node:child_process";
import { createPrivateKey } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { buildGrubEfi, grubConfig, ustarSingleFile } from "../../../src/bootloader/grub.ts";
import { loadSecureBootKeys } from "../../../src/bootloader/secureboot.ts";
import { tempDir } from "../../helpers/tmp.ts";

describe("GRUB config and EFI image", () => {
  const dir = tempDir();
  const cfg = grubConfig({ cmdline: "console=ttyS0 quiet" });

  it("is a script GRUB's own parser accepts", () => {
    const path = join(dir, "grub.cfg");
    writeFileSync(path, cfg);
    const r = spawnSync("grub-script-check", [path], { encoding: "utf8" });
    expect(r.status, r.stderr).toBe(0);
  });

  it("memdisk tar reads back with GNU tar", () => {
    const path = join(dir, "memdisk.tar");
    writeFileSync(path, ustarSingleFile("grub.cfg", new TextEncoder().encode(cfg)));
    expect(execFileSync("tar", ["-tvf", path], { encoding: "utf8" })).toMatch(
      /^-rw-r--r-- 0\/0 +\d+ 1970-01-01 00:00 grub.cfg$/m,
    );
    expect(execFileSync("tar", ["-xOf", path, "grub.cfg"], { encoding: "utf8" })).toBe(cfg);
  });

  it("builds a byte-identical x86_64 EFI image that carries the config", async () => {
    await buildGrubEfi(join(dir, "a.efi"), cfg);
    await buildGrubEfi(join(dir, "b.efi"), cfg);
    const a = readFileSync(join(dir, "a.efi"));
    expect(a.equals(readFileSync(join(dir, "b.efi")))).toBe(true);
    expect(a.subarray(0, 2).toString("latin1")).toBe("MZ");
    expect(a.includes(Buffer.from("abforge_try_A"))).toBe(true);
    expect(a.length).toBeLessThan(2 * 1024 * 1024);
    await buildGrubEfi(join(dir, "c.efi"), grubConfig({ cmdline: "console=tty0" }));
    expect(a.equals(readFileSync(join(dir, "c.efi")))).toBe(false);
  });

  it("with secureBoot: a script GRUB accepts, signed so that sbverify checks it against the certificate", async () => {
    const sbCfg = grubConfig({ cmdline: "console=ttyS0 quiet", secureBoot: true });
    const path = join(dir, "sb.cfg");
    writeFileSync(path, sbCfg);
    const check = spawnSync("grub-script-check", [path], { encoding: "utf8" });
    expect(check.status, check.stderr).toBe(0);
    const key = join(dir, "sb.key");
    const cert = join(dir, "sb.pem");
    execFileSync("openssl", [
      "req",
      "-new",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-keyout",
      key,
      "-subj",
      "/CN=abforge interop",
      "-days",
      "1",
      "-out",
      cert,
    ]);
    const efi = join(dir, "sb.efi");
    await buildGrubEfi(efi, sbCfg, await loadSecureBootKeys(key, cert));
    const ok = spawnSync("sbverify", ["--cert", cert, efi], { encoding: "utf8" });
    expect(ok.status, ok.stderr).toBe(0);
    const bytes = readFileSync(efi);
    // The memdisk holds grub.cfg and its signature; the private key is nowhere in the image.
    expect(bytes.includes(Buffer.from("grub.cfg.sig"))).toBe(true);
    const d = createPrivateKey(readFileSync(key)).export({ format: "jwk" }).d!;
    expect(bytes.includes(Buffer.from(d, "base64url").subarray(0, 32))).toBe(false);
    expect(bytes.includes(Buffer.from("PRIVATE KEY"))).toBe(false);
    const changed = join(dir, "sb-changed.efi");
    const at = bytes.indexOf("abforge_try_A");
    bytes[at] = bytes[at]! ^ 0x20;
    writeFileSync(changed, bytes);
    expect(spawnSync("sbverify", ["--cert", cert, changed]).status).not.toBe(0);
  });
});
