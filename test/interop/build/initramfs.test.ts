/**
 * The initramfs as the kernel will see it: gzip + cpio newc read by GNU
 * cpio, with busybox and its links, dmsetup and every library ldd lists, the
 * modules in dependency order and /init (src/build/README.md, "initramfs").
 */
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { gunzipSync } from "node:zlib";
import { describe, expect, it } from "vitest";
import { buildInitramfs, parseLdd } from "../../../src/build/initramfs.ts";
import { fetchKernel } from "../../../src/build/kernel.ts";
import { CACHE_DIR, KERNEL_PACKAGE } from "../../helpers/cache.ts";
import { tempDir } from "../../helpers/tmp.ts";

describe("buildInitramfs", async () => {
  const dir = tempDir();
  const tree = await fetchKernel({ package: KERNEL_PACKAGE, cacheDir: CACHE_DIR });
  const a = await buildInitramfs({
    kernelTree: tree,
    modules: ["virtio_net"],
    outPath: join(dir, "a.img"),
  });
  const cpio = gunzipSync(readFileSync(a.path));
  const listing = execFileSync("cpio", ["-itv", "--quiet"], { input: cpio, encoding: "utf8" });
  const names = execFileSync("cpio", ["-it", "--quiet"], { input: cpio, encoding: "utf8" })
    .trim()
    .split("\n");

  it("is byte-identical across builds", async () => {
    const b = await buildInitramfs({
      kernelTree: tree,
      modules: ["virtio_net"],
      outPath: join(dir, "b.img"),
    });
    expect(b.sha256).toBe(a.sha256);
    expect(readFileSync(b.path).equals(readFileSync(a.path))).toBe(true);
  });

  it("holds /init, busybox with applet links, and the console device", () => {
    const init = execFileSync("cpio", ["-i", "--quiet", "--to-stdout", "init"], { input: cpio });
    expect(init.toString()).toBe(
      readFileSync(new URL("../../../src/build/assets/init.sh", import.meta.url), "utf8"),
    );
    expect(listing).toMatch(/^-rwxr-xr-x .* init$/m);
    expect(listing).toMatch(/^lrwxrwxrwx .* bin\/sh -> \.\.\/bin\/busybox$/m);
    expect(listing).toMatch(/^lrwxrwxrwx .* sbin\/switch_root -> \.\.\/bin\/busybox$/m);
    expect(listing).toMatch(/^crw------- .* 5, +1 .* dev\/console$/m);
  });

  it("holds dmsetup and every shared library ldd lists for it", () => {
    expect(names).toContain("sbin/dmsetup");
    const libs = parseLdd(execFileSync("ldd", ["/usr/sbin/dmsetup"], { encoding: "utf8" }));
    expect(libs.length).toBeGreaterThan(2);
    for (const lib of libs) expect(names).toContain(lib.slice(1));
  });

  it("lists the modules in load order, dependencies first, the boot modules included", () => {
    const order = execFileSync("cpio", ["-i", "--quiet", "--to-stdout", "etc/abforge-modules"], {
      input: cpio,
      encoding: "utf8",
    })
      .trim()
      .split("\n");
    const base = (p: string) => p.split("/").pop()!.replace(/\.ko$/, "").replaceAll("-", "_");
    const mods = order.map(base);
    expect(a.modules).toEqual(mods);
    for (const m of [
      "virtio_pci",
      "virtio_blk",
      "dm_verity",
      "squashfs",
      "overlay",
      "virtio_net",
    ]) {
      expect(mods).toContain(m);
    }
    const loadsBefore = (x: string, y: string) =>
      expect(mods.indexOf(x)).toBeLessThan(mods.indexOf(y));
    loadsBefore("virtio_ring", "virtio");
    loadsBefore("virtio", "virtio_blk");
    loadsBefore("dm_mod", "dm_bufio");
    loadsBefore("dm_bufio", "dm_verity");
    loadsBefore("failover", "net_failover");
    for (const path of order) expect(names).toContain(`lib/modules/${path}`);
  });
});
