// The demo's view of the guest console (issue 11, point 12): whole lines, no
// terminal queries or screen clears, nothing while muted.
import { describe, expect, it } from "vitest";
import { ConsoleView } from "../../../qemu/console-view.ts";

function view(): { v: ConsoleView; out: string[] } {
  const out: string[] = [];
  return { v: new ConsoleView((t) => out.push(t)), out };
}

describe("ConsoleView", () => {
  it("prints whole lines only, holding a partial line until its end arrives", () => {
    const { v, out } = view();
    v.feed("abforge: booted slot A");
    expect(out).toEqual([]);
    v.feed(" version 1.0.0\nnext");
    expect(out.join("")).toBe("abforge: booted slot A version 1.0.0\n");
    v.feed(" line\n");
    expect(out.join("")).toBe("abforge: booted slot A version 1.0.0\nnext line\n");
  });

  it("drops the shell's cursor query and the firmware's screen clears, even split across chunks, and keeps colours", () => {
    const { v, out } = view();
    v.feed("abforge:/# \x1b[6");
    v.feed('n{"msg":"agent started"}\r\n\x1b[2J\x1b[01;01H\x1b[=3hBdsDxe: loading\n');
    v.feed("\x1b[0m\x1b[30m\x1b[47mWelcome to GRUB!\n");
    expect(out.join("")).toBe(
      'abforge:/# {"msg":"agent started"}\nBdsDxe: loading\n\x1b[0m\x1b[30m\x1b[47mWelcome to GRUB!\n',
    );
  });

  it("shows nothing while muted, and skip() drops the echo of a typed command", () => {
    const { v, out } = view();
    v.muted = true;
    v.feed(
      "echo __ABF_''BEGIN_x__; abforge agent status; echo __ABF_''END_x__ $?\n__ABF_BEGIN_x__\nbooted slot B\n__ABF_END_x__ 0\nabforge:/# ",
    );
    v.skip();
    v.muted = false;
    v.feed("later\n");
    expect(out.join("")).toBe("later\n");
  });
});
