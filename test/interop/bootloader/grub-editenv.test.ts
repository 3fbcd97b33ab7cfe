// The environment block against the real grub-editenv, both ways
// (src/bootloader/README.md, "Environment block").
import { copyFileSync, existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  decodeEnv,
  editEnvFile,
  encodeEnv,
  readEnvFile,
  setEnvVar,
  unsetEnvVar,
} from "../../../src/bootloader/index.ts";
import { abforge } from "../../helpers/cli.ts";
import { tempDir } from "../../helpers/tmp.ts";
import { toolStatus } from "../../unit/bootloader/images.ts";

const dir = tempDir();
let n = 0;
const fresh = (tag: string) => join(dir, `${tag}-${n++}.env`);

const grubEditenv = (file: string, ...args: string[]) =>
  toolStatus("grub-editenv", [file, ...args]);

type Op = ["set", string, string] | ["unset", string];

async function applyGrub(file: string, ops: Op[]): Promise<void> {
  for (const op of ops) {
    const r =
      op[0] === "set"
        ? await grubEditenv(file, "set", `${op[1]}=${op[2]}`)
        : await grubEditenv(file, "unset", op[1]);
    expect(r.code, r.stderr).toBe(0);
  }
}

async function applyOurs(file: string, ops: Op[]): Promise<void> {
  for (const op of ops) {
    await editEnvFile(
      file,
      (l) => (op[0] === "set" ? setEnvVar(l, op[1], op[2]) : unsetEnvVar(l, op[1])),
      { create: true },
    );
  }
}

const tricky = [
  "with spaces",
  "a=b=c",
  "#hash # inside",
  "back\\slash",
  "two\nlines",
  "ends with backslash\\",
  "\n#starts-a-comment-like-line",
  "",
  "ünïcödé ✓",
];

describe("grub-editenv interop", () => {
  it("create: `abforge bootloader env set` on a missing file == grub-editenv create + set", async () => {
    const ours = fresh("ours");
    const theirs = fresh("theirs");
    expect((await grubEditenv(theirs, "create")).code).toBe(0);
    expect((await grubEditenv(theirs, "set", "a=1", "b=x y")).code).toBe(0);
    const r = await abforge(["bootloader", "env", "set", ours, "a=1", "b=x y"]);
    expect(r.code, r.stderr).toBe(0);
    expect(readFileSync(ours)).toEqual(readFileSync(theirs));
  });

  it("the same sequence of set/unset gives byte-identical files (tricky values)", async () => {
    const ops: Op[] = [
      ...tricky.map((v, i): Op => ["set", `v${i}`, v]),
      ["set", "v1", "shorter"],
      ["set", "v3", "a much longer value than before, moving what follows"],
      ["unset", "v0"],
      ["unset", "absent"],
      ["set", "v0", "back, now last"],
    ];
    const ours = fresh("ours");
    const theirs = fresh("theirs");
    await applyGrub(theirs, ops);
    await applyOurs(ours, ops);
    expect(readFileSync(ours).toString("latin1")).toBe(readFileSync(theirs).toString("latin1"));
  });

  it("random sequences give byte-identical files (property)", async () => {
    const op: fc.Arbitrary<Op> = fc.oneof(
      fc.tuple(
        fc.constant("set" as const),
        fc.constantFrom("a", "b", "c", "order", "A_tries"),
        fc.oneof(fc.constantFrom(...tricky), fc.string({ maxLength: 40 })),
      ),
      fc.tuple(fc.constant("unset" as const), fc.constantFrom("a", "b", "c", "order")),
    );
    await fc.assert(
      fc.asyncProperty(
        fc.array(op, { minLength: 1, maxLength: 6 }).map((ops) =>
          // NUL cannot pass through argv
          ops.map((o): Op => (o[0] === "set" ? ["set", o[1], o[2].replaceAll("\0", "")] : o)),
        ),
        async (ops) => {
          const ours = fresh("ours");
          const theirs = fresh("theirs");
          await applyGrub(theirs, ops);
          await applyOurs(ours, ops);
          expect(readFileSync(ours)).toEqual(readFileSync(theirs));
        },
      ),
      { numRuns: 25 },
    );
  });

  it("grub-editenv list reads what encodeEnv writes; we read what grub-editenv writes", async () => {
    const vars = new Map(tricky.map((v, i) => [`k${i}`, v]));
    const ours = fresh("ours");
    await import("node:fs/promises").then((f) => f.writeFile(ours, encodeEnv(vars)));
    const listed = await grubEditenv(ours, "list");
    expect(listed.code).toBe(0);
    expect(listed.stdout).toBe([...vars].map(([k, v]) => `${k}=${v}\n`).join(""));

    const theirs = fresh("theirs");
    await applyGrub(
      theirs,
      [...vars].map(([k, v]): Op => ["set", k, v]),
    );
    expect([...decodeEnv(readFileSync(theirs))]).toEqual([...vars]);
    // `abforge bootloader env show` prints exactly what `grub-editenv list` prints
    const shown = await abforge(["bootloader", "env", "show", theirs]);
    expect(shown.code).toBe(0);
    expect(shown.stdout).toBe((await grubEditenv(theirs, "list")).stdout);
  });

  it("edits of a file grub-editenv made keep its notice line; grub-editenv edits ours", async () => {
    const file = fresh("mixed");
    await applyGrub(file, [["set", "a", "1"]]);
    await applyOurs(file, [["set", "b", "2"]]);
    await applyGrub(file, [
      ["set", "a", "11"],
      ["unset", "b"],
    ]);
    await applyOurs(file, [["set", "c", "3"]]);
    const reference = fresh("reference");
    await applyGrub(reference, [
      ["set", "a", "1"],
      ["set", "b", "2"],
      ["set", "a", "11"],
      ["unset", "b"],
      ["set", "c", "3"],
    ]);
    expect(readFileSync(file)).toEqual(readFileSync(reference));
    expect([...(await readEnvFile(file))].length).toBe(3); // notice, a, c
  });

  it("a set that does not fit: both refuse and leave the file as it was", async () => {
    const theirs = fresh("theirs");
    await applyGrub(theirs, [["set", "a", "x".repeat(800)]]);
    const ours = fresh("ours");
    copyFileSync(theirs, ours);
    const before = readFileSync(theirs);
    const big = `b=${"y".repeat(200)}`;
    expect((await grubEditenv(theirs, "set", big)).code).not.toBe(0);
    const r = await abforge(["bootloader", "env", "set", ours, big]);
    expect(r.code).toBe(41); // ENV_TOO_LARGE
    expect(r.stderr).toMatch(/more than the 1024-byte environment block/);
    expect(readFileSync(theirs)).toEqual(before);
    expect(readFileSync(ours)).toEqual(before);
    expect(existsSync(`${ours}.new`)).toBe(false);
  });
});
