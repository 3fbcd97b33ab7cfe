/**
 * The staging tree's metadata reaches a real squashfs: mksquashfs takes the
 * pseudo file that writePseudoFile produces (src/build/README.md, "Staging
 * and ownership") and unsquashfs shows the owners, modes and device nodes the
 * layers asked for, though nothing was chowned or mknod'ed on disk.
 */
import { execFileSync } from "node:child_process";
import { chownSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import tarStream from "tar-stream";
import { describe, expect, it } from "vitest";
import { applyLayers } from "../../../src/build/layers.ts";
import { tempDir } from "../../helpers/tmp.ts";

const work = tempDir("abforge-layers-sqfs-");

async function tar(
  entries: Parameters<ReturnType<typeof tarStream.pack>["entry"]>[0][],
): Promise<string> {
  const pack = tarStream.pack();
  for (const e of entries) {
    if (e.type === undefined || e.type === "file") pack.entry(e, "data");
    else pack.entry(e);
  }
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const c of pack) chunks.push(c as Buffer);
  const path = join(work, "layer.tar");
  writeFileSync(path, Buffer.concat(chunks));
  return path;
}

describe("pseudo file and mksquashfs", () => {
  it("gives the squashfs the layers' owners, modes, device nodes and FIFOs", async () => {
    const path = await tar([
      { name: "./", type: "directory", mode: 0o700 },
      { name: "usr/bin/passwd", mode: 0o4755 },
      { name: "home/alice/", type: "directory", mode: 0o750, uid: 1000, gid: 1000 },
      { name: 'home/alice/my "notes" \\ v1', mode: 0o600, uid: 1000, gid: 1000 },
      { name: "home/alice/link", type: "symlink", linkname: "/etc/motd", uid: 1000, gid: 1000 },
      { name: "usr/bin/passwd2", type: "link", linkname: "usr/bin/passwd" },
      { name: "tmp/", type: "directory", mode: 0o1777 },
      { name: "dev/", type: "directory", mode: 0o755 },
      { name: "dev/null", type: "character-device", mode: 0o666, devmajor: 1, devminor: 3 },
      { name: "dev/vda", type: "block-device", mode: 0o660, gid: 6, devmajor: 254, devminor: 0 },
      { name: "run/ctl", type: "fifo", mode: 0o620, gid: 5 },
    ]);
    const root = join(work, "rootfs");
    const { tree } = await applyLayers(
      {
        rootfs: {
          layers: [
            {
              kind: "tar",
              path,
              allowDevices: true,
              origin: { file: "t.yaml", line: 1, col: 1, label: "tar" },
            },
          ],
        },
      },
      root,
    );
    // What the pipeline adds after the layers: not recorded, so root-owned with its disk mode.
    mkdirSync(join(root, "boot"));
    writeFileSync(join(root, "boot/vmlinuz"), "kernel", { mode: 0o640 });
    chownSync(join(root, "boot/vmlinuz"), 1234, 1234);

    const pf = await tree.writePseudoFile(join(work, "pseudo"));
    const sqfs = join(work, "root.sqfs");
    execFileSync("mksquashfs", [
      root,
      sqfs,
      "-noappend",
      "-no-progress",
      "-quiet",
      ...pf.mksquashfsArgs,
    ]);
    const listing = execFileSync("unsquashfs", ["-lln", sqfs], { encoding: "utf8" });
    const entries = new Map<string, string>();
    for (const line of listing.trim().split("\n")) {
      const m = /^(\S+) (\d+\/\d+)\s+(\S+(?:,\s*\d+)?)\s+\S+ \S+ squashfs-root(.*)$/.exec(line);
      if (m)
        entries.set(
          m[4]!.replace(/ -> .*$/, "") || "/",
          `${m[1]} ${m[2]}${m[1]!.startsWith("c") || m[1]!.startsWith("b") ? ` ${m[3]!.replace(/\s+/g, "")}` : ""}`,
        );
    }
    expect(entries.get("/")).toBe("drwx------ 0/0");
    expect(entries.get("/usr/bin/passwd")).toBe("-rwsr-xr-x 0/0");
    expect(entries.get("/usr/bin/passwd2")).toBe("-rwsr-xr-x 0/0");
    expect(entries.get("/home/alice")).toBe("drwxr-x--- 1000/1000");
    expect(entries.get('/home/alice/my "notes" \\ v1')).toBe("-rw------- 1000/1000");
    expect(entries.get("/home/alice/link")).toBe("lrwxrwxrwx 1000/1000");
    expect(entries.get("/tmp")).toBe("drwxrwxrwt 0/0");
    expect(entries.get("/dev/null")).toBe("crw-rw-rw- 0/0 1,3");
    expect(entries.get("/dev/vda")).toBe("brw-rw---- 0/6 254,0");
    expect(entries.get("/run/ctl")).toBe("prw--w---- 0/5");
    expect(entries.get("/boot/vmlinuz")).toBe("-rw-r----- 0/0");
    expect(entries.get("/boot")).toBe("drwxr-xr-x 0/0");
  });
});
