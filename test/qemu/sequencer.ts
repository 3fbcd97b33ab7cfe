/**
 * The order of the QEMU suites: those that boot fixtures built in the
 * background (fixtures.ts `later`) run last, so the build overlaps the
 * others; the rest by name, the same order on every machine.
 */
import { BaseSequencer, type TestSpecification } from "vitest/node";

/** Suites that wait for a `later` fixture. */
const LAST = ["host.test.ts"];

export class QemuSequencer extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const rank = (f: TestSpecification) => (LAST.some((n) => f.moduleId.endsWith(`/${n}`)) ? 1 : 0);
    return [...files].sort((a, b) => rank(a) - rank(b) || a.moduleId.localeCompare(b.moduleId));
  }
}
