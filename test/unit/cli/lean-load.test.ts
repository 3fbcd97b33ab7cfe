/** src/cli/lean-load.ts: what it changes while the program loads, and that it puts everything back. */
import { createRequire } from "node:module";
import { describe, expect, it } from "vitest";
import { LazyListFormat, loadLean } from "../../../src/cli/lean-load.ts";

const http = createRequire(import.meta.url)("node:http") as Record<string, unknown>;
const getter = (name: string) => Object.getOwnPropertyDescriptor(http, name)?.get;

describe("loadLean", () => {
  it("hides node:http's undici getters and makes Intl.ListFormat lazy, only while loading", async () => {
    const before = { ws: getter("WebSocket"), lf: Intl.ListFormat };
    expect(before.ws).toBeTypeOf("function");
    const seen = await loadLean(async () => ({
      ws: "WebSocket" in http,
      lf: new Intl.ListFormat("en", { type: "conjunction" }),
    }));
    expect(seen.ws).toBe(false);
    expect(seen.lf).toBeInstanceOf(LazyListFormat);
    expect(getter("WebSocket")).toBe(before.ws);
    expect(Intl.ListFormat).toBe(before.lf);
  });

  it("puts everything back when the load fails", async () => {
    const lf = Intl.ListFormat;
    const ws = getter("MessageEvent");
    await expect(loadLean(() => Promise.reject(new Error("boom")))).rejects.toThrow("boom");
    expect(Intl.ListFormat).toBe(lf);
    expect(getter("MessageEvent")).toBe(ws);
  });
});

describe("LazyListFormat", () => {
  it("formats as Intl.ListFormat does, with the same options", () => {
    const list = ["a", "b", "c"];
    for (const o of [
      { style: "long", type: "conjunction" },
      { style: "long", type: "disjunction" },
      { style: "short", type: "unit" },
    ] as const) {
      const real = new Intl.ListFormat("en", o);
      const lazy = new LazyListFormat("en", o);
      expect(lazy.format(list)).toBe(real.format(list));
      expect(lazy.formatToParts(list)).toEqual(real.formatToParts(list));
      expect(lazy.resolvedOptions()).toEqual(real.resolvedOptions());
    }
    expect(new LazyListFormat("en", { type: "disjunction" }).format(["x", "y"])).toBe("x or y");
  });
});
