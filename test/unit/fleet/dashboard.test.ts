/**
 * The dashboard in a real browser (README.md, "The dashboard"): Debian's
 * chromium driven by playwright-core, after simulated hosts reported through
 * the real API. It asserts what a person reads: the versions, a halted
 * version and its reason, a stuck host's error, a host's timeline, the
 * search; it clicks Pause and Resume. The screenshot is kept in
 * test-results/fleet-dashboard.png.
 */
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { type Browser, chromium, type Locator, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openSqlite } from "../../../src/fleet/db.ts";
import { type FleetServer, startFleetServer } from "../../../src/fleet/server.ts";
import { FleetStore } from "../../../src/fleet/store.ts";
import { FakeClock } from "../../helpers/clock.ts";
import { tempDir } from "../../helpers/tmp.ts";
import { report, rolledBack, updated } from "./fixtures.ts";

const OPERATOR = "dashboard-operator-token-0123456789";
const ENROLL = "dashboard-enroll-token-0123456789";
const RESULTS = fileURLToPath(new URL("../../../test-results/", import.meta.url));

/** The text a person reads (rendered, CSS applied), not the DOM's textContent. */
function seen(l: Locator): Promise<string> {
  // biome-ignore lint/performance/useDomNodeTextContent: Playwright's innerText is what is shown
  return l.innerText();
}

let server: FleetServer;
let browser: Browser;
let page: Page;

async function post(r: object): Promise<void> {
  const res = await fetch(new URL("/v1/reports", server.url), {
    method: "POST",
    headers: { Authorization: `Bearer ${ENROLL}`, "Content-Type": "application/json" },
    body: JSON.stringify(r),
  });
  expect(res.status).toBe(202);
}

async function holds(channel: string): Promise<{ version: string; reason: string; by: string }[]> {
  const res = await fetch(new URL(`/v1/holds/${channel}`, server.url), {
    headers: { Authorization: `Bearer ${ENROLL}` },
  });
  return ((await res.json()) as { holds: { version: string; reason: string; by: string }[] }).holds;
}

beforeAll(async () => {
  const clock = new FakeClock({ start: new Date(Date.now() - 4 * 3_600_000) });
  const store = await FleetStore.open(
    await openSqlite(join(tempDir("abforge-fleet-"), "fleet.db")),
    {
      halt: { hosts: 3 },
    },
  );
  server = await startFleetServer({
    store,
    operatorToken: OPERATOR,
    enrollToken: ENROLL,
    port: 0,
    clock,
  });
  // host-10 starts a download that stalls, then says nothing for four hours
  await post(
    report(10, {
      event: "download-started",
      target: "3.0.0",
      lastError: { code: "REPO_STALLED", message: "no byte for 60 s from the repository" },
    }),
  );
  clock.advance(4 * 3_600_000);
  for (const i of [1, 2, 3, 4]) await post(report(i));
  for (const i of [5, 6])
    for (const r of updated(i, "3.1.0")) await post({ ...r, channel: "beta" });
  await post(report(7, { hostname: "web-frontend-7" }));
  for (const [i, why] of [
    [7, "health check nginx.service failed: inactive"],
    [8, "health check nginx.service failed: inactive"],
    [9, "slot B did not come up after 3 tries"],
  ] as const)
    for (const r of rolledBack(i, "3.0.0", why))
      await post({ ...r, ...(i === 7 ? { hostname: "web-frontend-7" } : {}) });
  browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--no-sandbox"] });
  page = await browser.newPage({ viewport: { width: 1400, height: 1800 } });
}, 60_000);

afterAll(async () => {
  await browser?.close();
  await server?.close();
  await server?.store.close();
});

describe("the fleet dashboard in Chromium", () => {
  it("asks for the operator token, then shows the fleet", async () => {
    await page.goto(server.url);
    await page.getByLabel("Operator token").fill("wrong-token-000000000000");
    await page.getByRole("button", { name: "Sign in" }).click();
    await expect.poll(() => page.locator("#status").textContent()).toContain("token was refused");
    await page.getByLabel("Operator token").fill(OPERATOR);
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.locator("#total-hosts", { hasText: "10" }).waitFor();
    const versions = await page.locator("#versions tbody tr").allInnerTexts();
    expect(versions.map((t) => t.split("\t").slice(0, 3).join(" "))).toEqual([
      "beta 3.1.0 2",
      "stable 2.0.0 8",
    ]);
  });

  it("shows the halted version and why", async () => {
    const hold = page.locator("#holds .hold");
    await expect.poll(() => hold.count()).toBe(1);
    const text = await seen(hold);
    expect(text).toContain("stable 3.0.0");
    expect(text).toContain("halted automatically");
    expect(text).toContain(
      "halted: 3 of 4 hosts that tried 3.0.0 rolled back: host-08: health check nginx.service failed: inactive; host-09: slot B did not come up after 3 tries; web-frontend-7: health check nginx.service failed: inactive",
    );
    const failures = await seen(page.locator("#failures"));
    expect(failures).toContain(
      "host-09 rollback of 3.0.0 (stable): slot B did not come up after 3 tries",
    );
  });

  it("shows the stuck host with its last error in words", async () => {
    const stuck = await seen(page.locator("#stuck"));
    expect(stuck).toContain("host-10");
    expect(stuck).toContain(
      "no report for 4 h (3 poll intervals are 3 min); last event download-started; last error REPO_STALLED: no byte for 60 s from the repository",
    );
  });

  it("draws the rollout chart and finds a host by name, with its timeline", async () => {
    // beta, the first channel: its two hosts moved from 2.0.0 to 3.1.0
    await expect.poll(() => page.locator("#rollout svg polyline").count()).toBe(2);
    expect(await seen(page.locator("#rollout .legend"))).toBe("2.0.0: 0 hosts3.1.0: 2 hosts");
    await page.getByLabel("channel").first().selectOption("stable");
    await expect.poll(() => seen(page.locator("#rollout .legend"))).toBe("2.0.0: 8 hosts");
    await page.getByPlaceholder("hostname or machine id").fill("FRONTEND");
    await expect.poll(() => page.locator("#hosts tbody tr").count()).toBe(1);
    await page.locator("#hosts tbody tr", { hasText: "web-frontend-7" }).click();
    const timeline = page.locator("#timeline li");
    await expect.poll(() => timeline.count()).toBe(4);
    expect(await seen(timeline.first())).toMatch(
      /rollback 3\.0\.0 \(running 2\.0\.0\) — health check nginx\.service failed: inactive/,
    );
    await page.getByPlaceholder("hostname or machine id").fill("");
    await expect.poll(() => page.locator("#hosts tbody tr").count()).toBe(10);
  });

  it("pauses a version with a click, and resumes the halted one", async () => {
    await page
      .locator("#versions tbody tr", { hasText: "beta" })
      .getByRole("button", { name: "Pause" })
      .click();
    await expect
      .poll(async () => (await holds("beta")).map((h) => [h.version, h.by]))
      .toEqual([["3.1.0", "operator"]]);
    await expect.poll(() => page.locator("#holds .hold").count()).toBe(2);
    expect(await seen(page.locator("#holds"))).toContain("beta 3.1.0 held — paused by an operator");
    mkdirSync(RESULTS, { recursive: true });
    await page.screenshot({ path: join(RESULTS, "fleet-dashboard.png"), fullPage: true });
    await page.getByRole("button", { name: "Resume stable 3.0.0" }).click();
    await expect.poll(() => holds("stable")).toEqual([]);
    await expect.poll(() => page.locator("#holds .hold.resumed").count()).toBe(1);
  });
});
