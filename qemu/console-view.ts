/** The guest's serial console as the demo shows it to a person (scripts/demo.ts). */

/**
 * The guest's console for a person: whole lines only, so what the demo prints
 * never lands inside a guest line; control sequences other than colours
 * dropped (the shell's cursor-position query ESC[6n would make a real
 * terminal type its answer; the firmware clears the screen); muted while the
 * demo runs a command in the guest, whose answer it prints itself.
 */
// biome-ignore lint/suspicious/noControlCharactersInRegex: ESC starts the sequences to drop
const CONTROL_SEQUENCE = /\x1b\[[0-9;=?]*[A-La-ln-z]/g;

export class ConsoleView {
  #partial = "";
  muted = false;
  readonly #write: (text: string) => void;
  constructor(write: (text: string) => void) {
    this.#write = write;
  }
  feed(text: string): void {
    const clean = (this.#partial + text).replace(CONTROL_SEQUENCE, "").replace(/\r/g, "");
    const end = clean.lastIndexOf("\n") + 1;
    this.#partial = clean.slice(end);
    if (!this.muted && end > 0) this.#write(clean.slice(0, end));
  }
  /** Drop what the console said up to now (the echo of a command the demo typed). */
  skip(): void {
    this.#partial = "";
  }
}
