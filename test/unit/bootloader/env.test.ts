// The environment block codec against src/bootloader/README.md, "Environment block".
import { readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  decodeEnv,
  ENV_BLOCK_SIZE,
  ENV_HEADER,
  editEnvFile,
  encodeEnv,
  envContentLength,
  GRUB_EDITENV_NOTICE,
  newEnvLines,
  parseEnvBlock,
  readEnvFile,
  serializeEnvBlock,
  setEnvVar,
  unsetEnvVar,
} from "../../../src/bootloader/index.ts";
import { codeOf } from "../../helpers/errors.ts";
import { tempDir } from "../../helpers/tmp.ts";

const enc = new TextEncoder();

/** A block from its text: header + text + `#` padding. */
function block(text: string, size = ENV_BLOCK_SIZE): Uint8Array {
  const b = new Uint8Array(size).fill(0x23);
  b.set(enc.encode(ENV_HEADER + text));
  return b;
}

describe("encodeEnv", () => {
  it("writes the header, one name=value line per variable in map order, then # padding", () => {
    const b = encodeEnv(
      new Map([
        ["order", "A B"],
        ["A_tries", "3"],
      ]),
    );
    expect(b.length).toBe(1024);
    const text = new TextDecoder().decode(b);
    const content = "# GRUB Environment Block\norder=A B\nA_tries=3\n";
    expect(text.slice(0, content.length)).toBe(content);
    expect(text.slice(content.length)).toBe("#".repeat(1024 - content.length));
  });

  it("escapes backslash and newline with a backslash, nothing else", () => {
    const b = encodeEnv(new Map([["k", "a\\b\nc = #d"]]));
    const text = new TextDecoder().decode(b);
    expect(text.startsWith(`${ENV_HEADER}k=a\\\\b\\\nc = #d\n#`)).toBe(true);
  });

  it("fills the block exactly and refuses one byte more (ENV_TOO_LARGE)", () => {
    const room = ENV_BLOCK_SIZE - ENV_HEADER.length - "k=\n".length;
    const full = encodeEnv(new Map([["k", "x".repeat(room)]]));
    expect(full[full.length - 1]).toBe(0x0a);
    expect(decodeEnv(full).get("k")).toBe("x".repeat(room));
    expect(codeOf(() => encodeEnv(new Map([["k", "x".repeat(room + 1)]])))).toBe("ENV_TOO_LARGE");
    // an escaped character takes two bytes
    expect(codeOf(() => encodeEnv(new Map([["k", `${"x".repeat(room - 1)}\n`]])))).toBe(
      "ENV_TOO_LARGE",
    );
  });

  it("refuses names GRUB cannot store (ENV_BAD_ENTRY)", () => {
    for (const name of ["", "a=b", "a\nb", "#x", "a\0"]) {
      expect(codeOf(() => encodeEnv(new Map([[name, "v"]])))).toBe("ENV_BAD_ENTRY");
    }
    expect(codeOf(() => encodeEnv(new Map([["k", "a\0b"]])))).toBe("ENV_BAD_ENTRY");
  });

  it("encodes into another block size when asked", () => {
    expect(encodeEnv(new Map([["a", "1"]]), 512).length).toBe(512);
  });
});

describe("decodeEnv", () => {
  it("reads variables in block order and skips comment lines", () => {
    const vars = decodeEnv(block(`${GRUB_EDITENV_NOTICE}\nb=2\n# note\na=x=y #z\n`));
    expect([...vars]).toEqual([
      ["b", "2"],
      ["a", "x=y #z"],
    ]);
  });

  it("unescapes \\x as x, and a line continues after an escaped newline", () => {
    expect(decodeEnv(block("k=a\\\\b\\\nc\nz=\\q\n")).get("k")).toBe("a\\b\nc");
    expect(decodeEnv(block("z=\\q\n")).get("z")).toBe("q");
  });

  it("reads an empty block and a block with no padding", () => {
    expect(decodeEnv(block("")).size).toBe(0);
    const room = ENV_BLOCK_SIZE - ENV_HEADER.length - 3;
    expect(decodeEnv(block(`k=${"v".repeat(room)}\n`)).get("k")?.length).toBe(room);
  });

  it.each([
    ["another size", block("a=1\n", 2048)],
    ["a short block", block("a=1\n").subarray(0, 1000)],
    ["no header", enc.encode("#".repeat(1024))],
    ["a wrong header", block("").map((b, i) => (i === 2 ? 0x67 : b))],
    ["a line without =", block("novalue\n")],
    ["an empty name", block("=v\n")],
    ["a value running into the padding", block("a=1")],
    ["an escaped last newline", block("a=1\\\n")],
    ["garbage after the padding", block("a=1\n##x")],
    ["a NUL byte", block("a=\0\n")],
    ["a duplicate name", block("a=1\na=2\n")],
    ["an unterminated comment", block("#abc")],
    [
      "bytes that are not UTF-8",
      (() => {
        const b = block("a=xx\n");
        b[ENV_HEADER.length + 2] = 0xff;
        return b;
      })(),
    ],
  ])("refuses %s (ENV_BAD_BLOCK)", (_what, b) => {
    expect(codeOf(() => decodeEnv(b))).toBe("ENV_BAD_BLOCK");
  });

  it("names the source and offset in the error", () => {
    try {
      decodeEnv(block("a=1\nbroken\n"), { source: "ESP /GRUBENV" });
      expect.unreachable();
    } catch (err) {
      expect((err as Error).message).toMatch(/^ESP \/GRUBENV: the line at offset 29 has no "="/);
      expect((err as { details: { offset: number } }).details.offset).toBe(29);
    }
  });
});

// Names GRUB can store: no "=", newline, NUL, and no leading "#".
const name = fc
  .string({ minLength: 1, maxLength: 12, unit: "grapheme" })
  .filter((s) => !/[=\n\0]/.test(s) && !s.startsWith("#"));
// Values: anything without NUL, with the characters that need care made likely.
const value = fc
  .array(
    fc.oneof(
      fc.constantFrom("\\", "\n", "=", "#", " ", "\\\n", "\n#"),
      fc.string({ maxLength: 4, unit: "grapheme" }),
    ),
    { maxLength: 8 },
  )
  .map((parts) => parts.join("").replaceAll("\0", ""));

describe("round trip (property)", () => {
  it("decodeEnv(encodeEnv(vars)) == vars for any names and values that fit", () => {
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.tuple(name, value), { selector: (t) => t[0], maxLength: 12 }),
        (entries) => {
          const vars = new Map(entries);
          const lines = [...vars].map(([n, v]) => ({ kind: "var" as const, name: n, value: v }));
          if (envContentLength(lines) > ENV_BLOCK_SIZE) {
            expect(codeOf(() => encodeEnv(vars))).toBe("ENV_TOO_LARGE");
            return;
          }
          const b = encodeEnv(vars);
          expect([...decodeEnv(b)]).toEqual([...vars]);
          // and the bytes are stable
          expect(encodeEnv(decodeEnv(b))).toEqual(b);
        },
      ),
      { numRuns: 500 },
    );
  });

  it("set keeps an existing variable's place, appends a new one, unset removes it", () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.boolean(), fc.constantFrom("a", "b", "c", "d"), value), {
          maxLength: 20,
        }),
        (ops) => {
          let lines = newEnvLines();
          const model = new Map<string, string>();
          for (const [isSet, n, v] of ops) {
            if (isSet) {
              lines = setEnvVar(lines, n, v);
              model.set(n, v);
            } else {
              lines = unsetEnvVar(lines, n);
              model.delete(n);
            }
          }
          if (envContentLength(lines) > ENV_BLOCK_SIZE) return;
          const b = serializeEnvBlock(lines);
          expect([...decodeEnv(b)]).toEqual([...model]);
          expect(parseEnvBlock(b)).toEqual(lines);
        },
      ),
      { numRuns: 300 },
    );
  });
});

describe("environment block files", () => {
  const dir = tempDir();

  it("set creates the file as grub-editenv create does, then edits it in place", async () => {
    const path = join(dir, "new.env");
    await editEnvFile(path, (l) => setEnvVar(l, "a", "1"), { create: true });
    const bytes = readFileSync(path);
    expect(bytes.length).toBe(1024);
    expect(bytes.toString("latin1").startsWith(`${ENV_HEADER}${GRUB_EDITENV_NOTICE}\na=1\n#`)).toBe(
      true,
    );
    expect([...decodeEnv(bytes)]).toEqual([["a", "1"]]);
    expect(statSync(path).mode & 0o777).toBe(0o644);
  });

  it("ENV_NOT_FOUND for a missing file when not creating", async () => {
    await expect(readEnvFile(join(dir, "missing"))).rejects.toMatchObject({
      code: "ENV_NOT_FOUND",
    });
    await expect(editEnvFile(join(dir, "missing"), (l) => l)).rejects.toMatchObject({
      code: "ENV_NOT_FOUND",
    });
  });

  it("refuses a file of another size and leaves it as it was", async () => {
    const path = join(dir, "big.env");
    const big = block("a=1\n", 2048);
    writeFileSync(path, big);
    await expect(editEnvFile(path, (l) => setEnvVar(l, "b", "2"))).rejects.toMatchObject({
      code: "ENV_BAD_BLOCK",
      message: expect.stringMatching(/big\.env: size is 2048 bytes/),
    });
    expect(readFileSync(path)).toEqual(Buffer.from(big));
  });

  it("a write that does not fit is refused and leaves the file as it was", async () => {
    const path = join(dir, "full.env");
    await editEnvFile(path, (l) => setEnvVar(l, "a", "1"), { create: true });
    const before = readFileSync(path);
    await expect(
      editEnvFile(path, (l) => setEnvVar(setEnvVar(l, "b", "2"), "c", "x".repeat(1000))),
    ).rejects.toMatchObject({ code: "ENV_TOO_LARGE" });
    expect(readFileSync(path)).toEqual(before);
  });
});
