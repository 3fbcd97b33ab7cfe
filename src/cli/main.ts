/** Entry point of the abforge command-line program (bin/abforge runs this file). */
import { createProgram } from "./program.ts";

await createProgram().parseAsync(process.argv);
