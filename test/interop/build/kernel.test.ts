/**
 * Fetching the Debian cloud kernel (apt-get download, dpkg-deb -x) and
 * resolving modules with their dependencies (src/build/README.md, "Kernel
 * and modules"), checked against modinfo's depends= and modules.builtin.
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { fetchKernel, resolveModules } from "../../../src/build/kernel.ts";
import { CACHE_DIR, KERNEL_PACKAGE } from "../../helpers/cache.ts";
import { tempDir } from "../../helpers/tmp.ts";

describe("fetchKernel + resolveModules (Debian cloud kernel)", async () => {
  const tree = await fetchKernel({ package: KERNEL_PACKAGE, cacheDir: CACHE_DIR });

  it("resolves the metapackage to the real package and finds vmlinuz and modules", () => {
    expect(tree.package?.name).toMatch(/^linux-image-\d.*-cloud-amd64$/);
    expect(tree.vmlinuz.endsWith(`/boot/vmlinuz-${tree.version}`)).toBe(true);
    expect(tree.modulesDir.endsWith(`/lib/modules/${tree.version}`)).toBe(true);
  });

  it("reuses the cached tree on a second call", async () => {
    const again = await fetchKernel({ package: KERNEL_PACKAGE, cacheDir: CACHE_DIR });
    expect(again).toEqual(tree);
  });

  it("orders dependencies before the modules that need them, each once", async () => {
    const mods = await resolveModules(tree, ["virtio_blk", "dm_verity", "virtio-pci", "dm-verity"]);
    const names = mods.map((m) => m.name);
    expect(new Set(names).size).toBe(names.length);
    for (const m of mods) {
      for (const d of m.depends) expect(names.indexOf(d)).toBeLessThan(names.indexOf(m.name));
    }
    expect(names.indexOf("virtio_ring")).toBeLessThan(names.indexOf("virtio"));
    expect(names).toEqual(expect.arrayContaining(["dm_mod", "dm_bufio", "reed_solomon"]));
    expect(mods.find((m) => m.name === "dm_verity")?.relPath).toBe(
      "kernel/drivers/md/dm-verity.ko",
    );
  });

  it("reads depends= from .modinfo exactly as modinfo does", async () => {
    const mods = await resolveModules(tree, ["virtio_net", "dm-verity", "overlay"]);
    for (const m of mods) {
      const want = execFileSync("modinfo", ["-F", "depends", m.path], { encoding: "utf8" })
        .trim()
        .split(",")
        .filter(Boolean)
        .map((d) => d.replaceAll("-", "_"));
      expect(m.depends, m.name).toEqual(want);
    }
  });

  it("downloads a cached package again when it no longer matches apt's sha256", async () => {
    const cache = tempDir();
    const debs = join(cache, "kernel", "debs");
    mkdirSync(debs, { recursive: true });
    const [deb] = readdirSync(join(CACHE_DIR, "kernel", "debs")).filter((f) => f.endsWith(".deb"));
    const bytes = readFileSync(join(CACHE_DIR, "kernel", "debs", deb!));
    bytes[1000] = bytes[1000]! ^ 0xff;
    writeFileSync(join(debs, deb!), bytes);
    const again = await fetchKernel({ package: KERNEL_PACKAGE, cacheDir: cache });
    expect(again.version).toBe(tree.version);
    expect(
      readFileSync(join(debs, deb!)).equals(readFileSync(join(CACHE_DIR, "kernel", "debs", deb!))),
    ).toBe(true);
  });

  it("opens an extracted tree given as a path, and refuses a directory with no kernel", async () => {
    const fromPath = await fetchKernel({ path: tree.root, cacheDir: CACHE_DIR });
    expect(fromPath).toEqual({ ...tree, package: null });
    await expect(fetchKernel({ path: tree.modulesDir, cacheDir: CACHE_DIR })).rejects.toMatchObject(
      {
        code: "KERNEL_NOT_FOUND",
        message: expect.stringContaining("no boot/vmlinuz-<version>"),
      },
    );
  });

  it("skips a module built into the kernel", async () => {
    expect(await resolveModules(tree, ["ext4"])).toEqual([]);
  });

  it("names a missing module and the chain that wanted it", async () => {
    await expect(resolveModules(tree, ["no_such_module"])).rejects.toMatchObject({
      code: "MODULE_NOT_FOUND",
      message: expect.stringContaining("no module no_such_module"),
    });
  });
});
