/** `abforge repo publish` and `abforge repo serve`, run as an operator runs them. */
import { spawn } from "node:child_process";
import { mkdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { EXIT_CODES } from "../../../src/cli/exit-codes.ts";
import { decodeIndex } from "../../../src/repo/index.ts";
import { ABFORGE, abforge } from "../../helpers/cli.ts";
import { tempDir } from "../../helpers/tmp.ts";
import { makeBundle, makeKey } from "./fixtures.ts";

const dir = tempDir("abforge-repo-cli-");

describe("abforge repo publish", () => {
  it("publishes with --json, increments the serial, and refuses with distinct exit codes", async () => {
    const key = await makeKey(dir);
    const other = await makeKey(dir, "other");
    const repo = join(dir, "repo");
    const b1 = join(dir, "a-1.bundle");
    const b2 = join(dir, "a-2.bundle");
    const bad = join(dir, "bad.bundle");
    await makeBundle(b1, key, { version: "1.0.0" });
    await makeBundle(b2, key, { version: "2.0.0" });
    await makeBundle(bad, other, { version: "3.0.0" });
    const common = ["--repo", repo, "--channel", "stable", "--key", key.privatePath, "--json"];

    const r1 = await abforge([
      "repo",
      "publish",
      b1,
      ...common,
      "--expires-in",
      "1h",
      "--rollout-percent",
      "10",
    ]);
    expect(r1.code, r1.stderr).toBe(0);
    const j1 = JSON.parse(r1.stdout);
    expect(j1).toMatchObject({
      serial: 1,
      version: "1.0.0",
      bundlePath: "bundles/demo-1.0.0.bundle",
    });
    expect(Date.parse(j1.expiresAt) - Date.parse(j1.issuedAt)).toBe(3_600_000);

    const r2 = await abforge(["repo", "publish", b2, ...common, "--min-update-from", "1.0.0"]);
    expect(r2.code, r2.stderr).toBe(0);
    expect(JSON.parse(r2.stdout).serial).toBe(2);
    const index = decodeIndex(await readFile(join(repo, "channels/stable.json")));
    expect(index.signed.latest).toMatchObject({ version: "2.0.0", minUpdateFrom: "1.0.0" });
    expect(index.signed.rollout.percent).toBe(100);
    expect(Date.parse(index.signed.expiresAt) - Date.parse(index.signed.issuedAt)).toBe(
      30 * 86_400_000,
    );

    const down = await abforge(["repo", "publish", b1, ...common.slice(0, -1)]);
    expect(down.code).toBe(EXIT_CODES.REPO_PUBLISH_REFUSED);
    expect(down.stderr).toMatch(
      /^abforge: channel "stable" is at 2\.0\.0; publishing 1\.0\.0 would be a downgrade/m,
    );

    const unsigned = await abforge(["repo", "publish", bad, ...common]);
    expect(unsigned.code).toBe(EXIT_CODES.REPO_PUBLISH_REFUSED);
    expect(JSON.parse(unsigned.stdout).error.code).toBe("REPO_PUBLISH_REFUSED");
    expect(unsigned.stderr).toMatch(/does not verify with key/);
    expect(unsigned.stderr).not.toMatch(/at .*\.ts:\d+/); // no stack trace

    const noKey = await abforge([
      "repo",
      "publish",
      b1,
      ...common.slice(0, 4),
      "--key",
      join(dir, "missing.key"),
    ]);
    expect(noKey.code).toBe(EXIT_CODES.KEY_BAD);
  });

  it("rejects a malformed duration as a usage error", async () => {
    const r = await abforge([
      "repo",
      "publish",
      "x.bundle",
      "--repo",
      dir,
      "--channel",
      "s",
      "--key",
      "k",
      "--expires-in",
      "30 days",
    ]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--expires-in.*positive duration/);
  });

  it("publishes waves into the signed index, and refuses a bad list naming the wave", async () => {
    const key = await makeKey(dir, "waves");
    const repo = join(dir, "repo-waves");
    const b = join(dir, "w-1.bundle");
    await makeBundle(b, key, { version: "1.0.0" });
    const args = [
      "repo",
      "publish",
      b,
      "--repo",
      repo,
      "--channel",
      "stable",
      "--key",
      key.privatePath,
    ];
    const bad = await abforge([...args, "--waves", "1h=10%,30m=100%"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--waves.*wave 2 "30m=100%".*times must strictly increase/);
    const both = await abforge([...args, "--waves", "1h=100%", "--rollout-percent", "50"]);
    expect(both.code, both.stderr).toBe(EXIT_CODES.REPO_PUBLISH_REFUSED);
    expect(both.stderr).toMatch(/rollout percent 50 and waves together/);
    const ok = await abforge([...args, "--waves", "1h=1%,6h=5%,1d=25%,3d=100%"]);
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.stdout).toMatch(/waves {2}1h=1%,6h=5%,1d=25%,3d=100% after /);
    const index = decodeIndex(await readFile(join(repo, "channels", "stable.json")));
    expect(index.signed.rollout).toEqual({
      percent: 100,
      waves: [
        { afterSeconds: 3600, percent: 1 },
        { afterSeconds: 21_600, percent: 5 },
        { afterSeconds: 86_400, percent: 25 },
        { afterSeconds: 259_200, percent: 100 },
      ],
    });
  });
});

describe("abforge repo serve", () => {
  it("prints its URL, serves, logs one line per request, and stops on SIGTERM", async () => {
    const repo = join(dir, "served");
    await mkdir(join(repo, "channels"), { recursive: true });
    const { writeFile } = await import("node:fs/promises");
    await writeFile(join(repo, "channels/stable.json"), "{}\n");
    const child = spawn(ABFORGE, ["repo", "serve", "--repo", repo, "--port", "0"], {
      env: { ...process.env, ABFORGE_LOG_FORMAT: "json" },
    });
    let stdout = "";
    let stderr = "";
    child.stderr.on("data", (d) => {
      stderr += d;
    });
    const url = await new Promise<string>((resolve, reject) => {
      child.stdout.on("data", (d) => {
        stdout += d;
        const line = stdout.split("\n")[0];
        if (stdout.includes("\n") && line) resolve(line);
      });
      child.on("exit", () => reject(new Error(`serve exited: ${stderr}`)));
    });
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/$/);
    expect(url).not.toMatch(/:0\/$/);
    const res = await fetch(`${url}channels/stable.json`);
    expect(res.status).toBe(200);
    expect(await res.text()).toBe("{}\n");
    expect((await fetch(`${url}channels/`)).status).toBe(404);
    const exited = new Promise<number | null>((resolve) =>
      child.on("exit", (code) => resolve(code)),
    );
    child.kill("SIGTERM");
    expect(await exited).toBe(0);
    const requests = stderr
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l))
      .filter((l) => l.method !== undefined);
    expect(requests.map((l) => [l.method, l.path, l.status])).toEqual([
      ["GET", "/channels/stable.json", 200],
      ["GET", "/channels/", 404],
    ]);
  });

  it("fails with REPO_SERVE_FAILED for a missing directory", async () => {
    const r = await abforge(["repo", "serve", "--repo", join(dir, "nope"), "--port", "0"]);
    expect(r.code).toBe(EXIT_CODES.REPO_SERVE_FAILED);
    expect(r.stderr).toMatch(/is not a readable directory/);
  });
});
