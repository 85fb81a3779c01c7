/**
 * Typed errors, with the messages of the deeplock CLI. No message ever holds a key.
 */

/** The base of every error deeplock throws; `code` says which kind it is. */
export class DeeplockError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = new.target.name;
    this.code = code;
  }
}

/** The key does not open this file (its key check value differs). */
export class WrongKeyError extends DeeplockError {
  constructor(what: string) {
    super(
      "wrong-key",
      `wrong key: ${what} was locked with a different key (key check value mismatch); pass the key file it was locked with (if it is the right key, the file's salt or key check value was changed)`,
    );
  }
}

/** Authentication failed: part of the file was changed after locking. */
export class TamperedError extends DeeplockError {
  constructor(part: string, what: string) {
    super(
      "tampered",
      `${part} in ${what} was modified after locking (authentication failed); nothing was written: do not use this copy, get the locked model again from where it came from`,
    );
  }
}

/** The file carries no deeplock lock record. */
export class NotLockedError extends DeeplockError {
  constructor(what: string) {
    super("not-locked", `${what} is not locked (no deeplock metadata); nothing to unlock`);
  }
}

/** The file was locked with scheme v1, which has no tags: refused, as the loaders do. */
export class UnauthenticatedError extends DeeplockError {
  constructor(what: string) {
    super(
      "unauthenticated",
      `${what} was locked with scheme v1, which carries no authentication, so loaders refuse it; add tags to a copy you trust with \`deeplock upgrade\``,
    );
  }
}

/** The file is not a valid file of its format, or its lock record is damaged. */
export class BadFileError extends DeeplockError {
  constructor(what: string, reason: string) {
    super("bad-file", `${what}: ${reason}`);
  }
}

/** The key given is not a usable AES-128 key. */
export class BadKeyError extends DeeplockError {
  constructor(reason: string) {
    super("bad-key", `bad key: ${reason}; create one with \`deeplock keygen -o KEYFILE\``);
  }
}

/** A file of the model could not be read: missing, not served, or the network failed. */
export class MissingFileError extends DeeplockError {
  /** The file, as the model names it (`model.json`, a weight file's path). */
  readonly file: string;
  constructor(what: string, file: string, detail: string) {
    super(
      "missing-file",
      `${what}: cannot read ${file} (${detail}); copy or serve every file of the locked model (model.json and every weight file its weightsManifest names), or get it again from where it came from`,
    );
    this.file = file;
  }
}
