import { BaseError } from "../errors.ts";

export type GptErrorCode = "GPT_BAD_INPUT" | "GPT_CORRUPT" | "GPT_NO_SPACE" | "GPT_NOT_FOUND";

export class GptError extends BaseError<GptErrorCode> {}
