/** cpio newc writer: src/build/README.md, "cpio newc". */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  CPIO_HEADER_SIZE,
  type CpioEntry,
  cpioHeader,
  encodeCpio,
  normalizeCpioPath,
} from "../../../src/build/cpio.ts";

interface Parsed {
  ino: number;
  mode: number;
  uid: number;
  gid: number;
  mtime: number;
  rdevMajor: number;
  rdevMinor: number;
  name: string;
  data: Uint8Array;
}

/** An independent reader of the README's table, to round-trip archives. */
function parse(archive: Uint8Array): Parsed[] {
  const text = new TextDecoder();
  const out: Parsed[] = [];
  let off = 0;
  for (;;) {
    expect(off % 4).toBe(0);
    const h = text.decode(archive.subarray(off, off + CPIO_HEADER_SIZE));
    expect(h.slice(0, 6)).toBe("070701");
    const f = (i: number) => Number.parseInt(h.slice(6 + i * 8, 14 + i * 8), 16);
    const nameSize = f(11);
    const name = text.decode(archive.subarray(off + 110, off + 110 + nameSize - 1));
    expect(archive[off + 110 + nameSize - 1]).toBe(0);
    off += 110 + nameSize;
    off += (4 - (off % 4)) % 4;
    const size = f(6);
    const data = archive.subarray(off, off + size);
    off += size + ((4 - (size % 4)) % 4);
    if (name === "TRAILER!!!") {
      expect(off).toBe(archive.length);
      return out;
    }
    out.push({
      ino: f(0),
      mode: f(1),
      uid: f(2),
      gid: f(3),
      mtime: f(5),
      rdevMajor: f(9),
      rdevMinor: f(10),
      name,
      data,
    });
  }
}

describe("cpioHeader", () => {
  it("encodes the 13 fields as 8 uppercase hex digits after the magic, name NUL-padded to 4", () => {
    const h = cpioHeader({
      ino: 1,
      mode: 0o100755,
      uid: 0,
      gid: 0,
      nlink: 1,
      mtime: 0x5f5e100,
      fileSize: 10,
      devMajor: 0,
      devMinor: 0,
      rdevMajor: 0,
      rdevMinor: 0,
      name: "init",
    });
    // 110 + "init\0" = 115 → padded to 116
    expect(h.length).toBe(116);
    expect(new TextDecoder().decode(h.subarray(0, 110))).toBe(
      "070701" +
        "00000001" +
        "000081ED" +
        "00000000" +
        "00000000" +
        "00000001" +
        "05F5E100" +
        "0000000A" +
        "00000000".repeat(4) +
        "00000005" +
        "00000000",
    );
    expect([...h.subarray(110)]).toEqual([0x69, 0x6e, 0x69, 0x74, 0, 0]);
  });

  it("refuses a value that does not fit 32 bits, naming the entry", () => {
    expect(() =>
      cpioHeader({
        ino: 1,
        mode: 0,
        uid: 0,
        gid: 0,
        nlink: 1,
        mtime: 2 ** 32,
        fileSize: 0,
        devMajor: 0,
        devMinor: 0,
        rdevMajor: 0,
        rdevMinor: 0,
        name: "x",
      }),
    ).toThrow(/cpio entry x: mtime 4294967296/);
  });
});

describe("normalizeCpioPath", () => {
  it("strips ./, leading and doubled slashes", () => {
    expect(normalizeCpioPath("./a//b/")).toBe("a/b");
    expect(normalizeCpioPath("/usr/bin")).toBe("usr/bin");
  });
  it("refuses .. and empty paths", () => {
    expect(() => normalizeCpioPath("a/../b")).toThrow(/"\.\." is not allowed/);
    expect(() => normalizeCpioPath("./")).toThrow(/empty path/);
  });
});

describe("encodeCpio", () => {
  const entries: CpioEntry[] = [
    { type: "file", path: "bin/busybox", mode: 0o755, size: 3, data: new Uint8Array([1, 2, 3]) },
    { type: "symlink", path: "bin/sh", target: "busybox" },
    { type: "dir", path: "bin" },
    { type: "chardev", path: "dev/console", mode: 0o600, major: 5, minor: 1 },
    { type: "dir", path: "dev" },
    { type: "file", path: "init", mode: 0o755, size: 4, data: new TextEncoder().encode("#!sh") },
  ];

  it("sorts entries, numbers inodes from 1, sets owner 0:0 and the given mtime", async () => {
    const parsed = parse(await encodeCpio(entries, { mtime: 1234 }));
    expect(parsed.map((p) => p.name)).toEqual([
      "bin",
      "bin/busybox",
      "bin/sh",
      "dev",
      "dev/console",
      "init",
    ]);
    expect(parsed.map((p) => p.ino)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(parsed.every((p) => p.uid === 0 && p.gid === 0 && p.mtime === 1234)).toBe(true);
    expect(parsed[0]!.mode).toBe(0o040755);
    expect(parsed[2]!.mode).toBe(0o120777);
    expect(new TextDecoder().decode(parsed[2]!.data)).toBe("busybox");
    expect(parsed[4]!.mode).toBe(0o020600);
    expect([parsed[4]!.rdevMajor, parsed[4]!.rdevMinor]).toEqual([5, 1]);
  });

  it("is independent of the input order", async () => {
    const a = await encodeCpio(entries);
    const b = await encodeCpio([...entries].reverse());
    expect(Buffer.compare(a, b)).toBe(0);
  });

  it("refuses a path listed twice", async () => {
    await expect(encodeCpio([...entries, { type: "dir", path: "./bin/" }])).rejects.toThrow(
      /cpio entry bin: listed twice/,
    );
  });

  it("refuses streamed data whose size differs from the declared size", async () => {
    const e: CpioEntry = {
      type: "file",
      path: "f",
      size: 2,
      data: async function* () {
        yield new Uint8Array(3);
      },
    };
    await expect(encodeCpio([e])).rejects.toThrow(/cpio entry f: declared 2 bytes/);
    await expect(encodeCpio([{ ...e, size: 4 }])).rejects.toThrow(/declared 4 bytes .* has 3/);
  });

  it("round-trips any set of files (property)", async () => {
    const name = fc.stringMatching(/^[a-z0-9._-]{1,12}$/).filter((s) => s !== "." && s !== "..");
    await fc.assert(
      fc.asyncProperty(
        fc.uniqueArray(fc.record({ name, data: fc.uint8Array({ maxLength: 40 }) }), {
          selector: (r) => r.name,
          maxLength: 12,
        }),
        async (files) => {
          const archive = await encodeCpio(
            files.map((f) => ({ type: "file", path: f.name, size: f.data.length, data: f.data })),
          );
          const parsed = parse(archive);
          const want = [...files].sort((a, b) =>
            Buffer.compare(Buffer.from(a.name), Buffer.from(b.name)),
          );
          expect(parsed.map((p) => p.name)).toEqual(want.map((f) => f.name));
          for (const [i, p] of parsed.entries()) {
            expect(Buffer.from(p.data)).toEqual(Buffer.from(want[i]!.data));
          }
        },
      ),
    );
  });
});
