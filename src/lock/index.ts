/** The etcd reboot semaphore, locksmith's key and value (README.md), and its etcd client. */
export { LockError, type LockErrorCode } from "./errors.ts";
export {
  DEFAULT_TIMEOUT_MS,
  type EtcdEndpointOptions,
  EtcdGateway,
  endpointProblem,
  MAX_RESPONSE_BYTES,
} from "./etcd.ts";
export {
  DEFAULT_LOCK_TTL_MS,
  DEFAULT_MAX_ATTEMPTS,
  type HolderStatus,
  RebootLock,
  type RebootLockOptions,
} from "./reboot-lock.ts";
export {
  decodeSemaphore,
  encodeSemaphore,
  holderIdProblem,
  KEY_PREFIX,
  recordKey,
  type Semaphore,
  type SemaphoreValue,
  semaphoreKey,
} from "./semaphore.ts";
