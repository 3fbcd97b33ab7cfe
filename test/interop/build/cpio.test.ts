/** The cpio newc writer against GNU cpio (`cpio -it`, `cpio -i`). */
import { spawnSync } from "node:child_process";
import {
  mkdirSync,
  readFileSync,
  readlinkSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { cpioEntriesFromDir, encodeCpio } from "../../../src/build/cpio.ts";
import { tempDir } from "../../helpers/tmp.ts";

describe("cpio newc writer vs GNU cpio", () => {
  const dir = tempDir();
  const src = join(dir, "src");
  mkdirSync(join(src, "bin"), { recursive: true });
  mkdirSync(join(src, "etc/empty"), { recursive: true });
  writeFileSync(join(src, "init"), "#!/bin/sh\necho hi\n", { mode: 0o755 });
  writeFileSync(join(src, "bin/big"), Buffer.alloc(300_001, 7));
  writeFileSync(join(src, "etc/odd"), "x");
  symlinkSync("big", join(src, "bin/link"));

  it("lists and extracts what was archived, byte for byte", async () => {
    const archive = await encodeCpio(await cpioEntriesFromDir(src), { mtime: 1_700_000_000 });
    const list = spawnSync("cpio", ["-it", "--quiet"], { input: archive });
    expect(list.status).toBe(0);
    expect(list.stdout.toString().trim().split("\n")).toEqual([
      "bin",
      "bin/big",
      "bin/link",
      "etc",
      "etc/empty",
      "etc/odd",
      "init",
    ]);
    const out = join(dir, "out");
    mkdirSync(out);
    const x = spawnSync("cpio", ["-i", "--quiet", "-d", "--preserve-modification-time"], {
      input: archive,
      cwd: out,
    });
    expect(x.status, x.stderr.toString()).toBe(0);
    expect(readFileSync(join(out, "bin/big")).equals(readFileSync(join(src, "bin/big")))).toBe(
      true,
    );
    expect(readFileSync(join(out, "init"), "utf8")).toBe("#!/bin/sh\necho hi\n");
    expect(statSync(join(out, "init")).mode & 0o777).toBe(0o755);
    expect(statSync(join(out, "init")).mtimeMs).toBe(1_700_000_000_000);
    expect(readlinkSync(join(out, "bin/link"))).toBe("big");
    expect(statSync(join(out, "etc/empty")).isDirectory()).toBe(true);
  });

  it("is byte-identical across runs", async () => {
    const a = await encodeCpio(await cpioEntriesFromDir(src));
    const b = await encodeCpio(await cpioEntriesFromDir(src));
    expect(Buffer.compare(a, b)).toBe(0);
  });
});
