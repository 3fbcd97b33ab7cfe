// `--disk IMAGE` is the host, exactly (issue 11, point 13): the agent reads the
// config, trusted keys and release inside the slot the image boots, so `check`
// follows the image's own repository and channel and a slot gets the image's
// tries; `--pubkey` limits trust to the keys given; the output says which keys
// were trusted and where each came from.
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { keyId } from "../../../src/bundle/index.ts";
import { publish, type RepoServer, serve } from "../../../src/repo/index.ts";
import { abforge } from "../../helpers/cli.ts";
import { type BundleFixture, makeUpdateWorld, type UpdateWorld } from "../../helpers/fixtures.ts";
import { tempDir } from "../../helpers/tmp.ts";

let w: UpdateWorld;
let repo: RepoServer;
let repoDir: string;
beforeAll(async () => {
  const dir = tempDir();
  repoDir = join(dir, "repo");
  await mkdir(repoDir);
  // the repository first: its URL goes into the images' agent.yaml
  repo = await serve({ repoDir, host: "127.0.0.1", port: 0 });
  w = await makeUpdateWorld(dir, {
    versions: ["2.0.0"],
    agentConfig: (keyPath) =>
      [
        `repoUrl: ${repo.url}`,
        "channel: beta",
        "tries: 2",
        "trustedKeys:",
        `  - ${keyPath}`,
        "healthChecks:",
        "  - name: host-only",
        '    command: ["/bin/false"]',
        "    timeoutMs: 1000",
        "",
      ].join("\n"),
  });
  await publish({
    repoDir,
    bundlePath: (w.bundles["2.0.0"] as BundleFixture).path,
    channel: "beta",
    key: w.key.privateKey,
  });
});
afterAll(async () => {
  await repo?.close();
});

describe("agent --disk reads the image's own config, keys and release", () => {
  it("check follows the image's repository and channel", async () => {
    const d = await w.freshDisk("check");
    const r = await abforge(["agent", "check", "--disk", d.path, "--json"]);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ version: "2.0.0" });
    expect(r.stderr).toContain(`${repo.url.replace(/\/$/, "")}/channels/beta.json`);
  });

  it("an installed slot gets the image's tries, and the log names each trusted key's source", async () => {
    const d = await w.freshDisk("install");
    const r = await abforge([
      "agent",
      "install",
      (w.bundles["2.0.0"] as BundleFixture).path,
      "--disk",
      d.path,
      "--json",
    ]);
    expect(r.code, r.stderr).toBe(0);
    const id = keyId(w.key.publicKey);
    expect(r.stderr).toMatch(
      new RegExp(`trusting ${id} from /etc/abforge/keys/${id}\\.pub in ${d.path} \\(slot A`),
    );
    const slots = await abforge(["slots", "show", "--disk", d.path, "--json"]);
    expect(JSON.parse(slots.stdout)).toMatchObject({
      slots: { B: { version: "2.0.0", triesLeft: 2 } },
    });
    // the image's health checks are for the host it boots: not run on this machine
    const good = await abforge(["agent", "mark-good", "--disk", d.path, "--json"]);
    expect(good.code, good.stderr).toBe(0);
  });

  it("--pubkey limits trust to the keys given", async () => {
    const d = await w.freshDisk("pubkey");
    const other = join(tempDir(), "other.pub");
    await writeFile(other, w.untrusted.publicKey.export({ type: "spki", format: "pem" }));
    const r = await abforge([
      "agent",
      "install",
      (w.bundles["2.0.0"] as BundleFixture).path,
      "--disk",
      d.path,
      "--pubkey",
      other,
    ]);
    expect(r.code, r.stderr).toBe(52);
    expect(r.stderr).toContain(`trusting ${keyId(w.untrusted.publicKey)} from --pubkey ${other}`);
    expect(r.stderr).not.toContain(`trusting ${keyId(w.key.publicKey)}`);
  });

  it("--config still overrides the image's config", async () => {
    const d = await w.freshDisk("config");
    const cfg = join(tempDir(), "agent.yaml");
    await writeFile(cfg, "channel: stable\n");
    const r = await abforge(["agent", "check", "--disk", d.path, "--config", cfg, "--json"]);
    expect(r.code).toBe(70);
    expect(r.stderr).toMatch(/repoUrl/);
  });
});
