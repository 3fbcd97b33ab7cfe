/**
 * Loading the program without two costs that its dependencies bring along
 * and abforge never uses. Each is a few MiB of resident memory in every
 * abforge process, the agent's included (bench/install: its peak RSS).
 */
import { createRequire } from "node:module";

/**
 * Run `load` (the program's dynamic import) with:
 *
 * 1. `node:http`'s WebSocket, CloseEvent and MessageEvent taken off. Node's
 *    ESM view of `node:http` reads every export once, and these three are
 *    getters that load undici, a large module abforge never uses (+13 MB and
 *    +40 ms for every command, since got imports `node:http`). They are put
 *    back after, so `require("node:http").WebSocket` still works; only an ESM
 *    import of them from `node:http` would see undefined, and no abforge
 *    module has one.
 * 2. A lazy Intl.ListFormat. @sindresorhus/is, which got imports, makes two
 *    Intl.ListFormat objects as it loads, for the text of errors it may never
 *    raise: that reads ~4 MiB of ICU locale data. Objects made while `load`
 *    runs build the real formatter on first use; Intl.ListFormat itself is
 *    put back after.
 */
export async function loadLean<T>(load: () => Promise<T>): Promise<T> {
  const http = createRequire(import.meta.url)("node:http") as Record<string, unknown>;
  const lazy: [string, PropertyDescriptor][] = [];
  for (const name of ["WebSocket", "CloseEvent", "MessageEvent"]) {
    const d = Object.getOwnPropertyDescriptor(http, name);
    if (d?.get && d.configurable) {
      lazy.push([name, d]);
      delete http[name];
    }
  }
  const intl = Intl as unknown as Record<string, unknown>;
  const real = Intl.ListFormat;
  intl.ListFormat = LazyListFormat;
  try {
    return await load();
  } finally {
    for (const [name, d] of lazy) Object.defineProperty(http, name, d);
    intl.ListFormat = real;
  }
}

const RealListFormat = Intl.ListFormat;

/** Intl.ListFormat's interface; the real formatter is made at the first call. */
export class LazyListFormat {
  readonly #args: ConstructorParameters<typeof Intl.ListFormat>;
  #real: Intl.ListFormat | undefined;

  constructor(...args: ConstructorParameters<typeof Intl.ListFormat>) {
    this.#args = args;
  }

  get #f(): Intl.ListFormat {
    this.#real ??= new RealListFormat(...this.#args);
    return this.#real;
  }

  format(list: Iterable<string>): string {
    return this.#f.format(list);
  }

  formatToParts(list: Iterable<string>): ReturnType<Intl.ListFormat["formatToParts"]> {
    return this.#f.formatToParts(list);
  }

  resolvedOptions(): Intl.ResolvedListFormatOptions {
    return this.#f.resolvedOptions();
  }
}
