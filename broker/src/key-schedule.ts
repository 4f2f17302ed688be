// What the broker's two signers share (keys.ts: its own keys in the store; transit-signer.ts: a
// Vault Transit key): the rotation schedule's options, one schedule step at a time, the timer that
// checks the schedule, and the listeners told when the published key set changes (the revocation
// feed pushes that to verifiers). Each signer says what a step does (`rotate`).
import type { Logger } from 'pino';

/** The rotation schedule (docs/design.md, "Signing keys"). */
export interface KeyScheduleOptions {
  /** How long a key signs (seconds). */
  rotateEverySec: number;
  /**
   * How long a new key is published before it signs (seconds). Must be at least the verifiers'
   * JWKS cache lifetime, and shorter than `rotateEverySec`.
   */
  prepublishSec: number;
  /** Longest lifetime of any token the broker signs (seconds): how long a retired key stays published. */
  maxTokenTtlSec: number;
  /** Clock, epoch milliseconds (tests move time). Default `Date.now`. */
  now?: () => number;
  logger?: Logger;
  /** Start the schedule's timer in `open()` (default true; tests drive `rotateIfDue` themselves). */
  autoStart?: boolean;
  /** How often the timer checks the schedule and reloads keys other replicas made (ms). Default: min(prepublish/4, 60 s). */
  checkEveryMs?: number;
}

export abstract class KeySchedule {
  protected readonly rotation: Required<Omit<KeyScheduleOptions, 'logger' | 'autoStart'>> & {
    logger: Logger | undefined;
  };
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<void> = Promise.resolve();
  #kids: readonly string[] = [];
  readonly #changeListeners = new Set<() => void>();

  /** `name` prefixes the option errors (`SigningKeys: …`). */
  protected constructor(name: string, o: KeyScheduleOptions) {
    if (!(o.rotateEverySec > 0 && o.prepublishSec >= 0 && o.maxTokenTtlSec > 0)) {
      throw new RangeError(`${name}: rotateEverySec and maxTokenTtlSec must be > 0, prepublishSec >= 0`);
    }
    if (o.prepublishSec >= o.rotateEverySec) {
      throw new RangeError(`${name}: prepublishSec must be shorter than rotateEverySec`);
    }
    this.rotation = {
      rotateEverySec: o.rotateEverySec,
      prepublishSec: o.prepublishSec,
      maxTokenTtlSec: o.maxTokenTtlSec,
      now: o.now ?? Date.now,
      logger: o.logger,
      checkEveryMs: o.checkEveryMs ?? Math.max(1000, Math.min((o.prepublishSec * 1000) / 4, 60_000)),
    };
  }

  /** One schedule step at `now` (epoch seconds): reload, publish a successor, drop expired keys. */
  protected abstract rotate(now: number): Promise<void>;

  /** What the timer logs when a step failed (it retries at the next check). */
  protected abstract stepFailed(err: unknown): void;

  protected nowSec(): number {
    return Math.floor(this.rotation.now() / 1000);
  }

  /**
   * Runs the schedule's step now (`nowMs` defaults to the clock). One at a time: a call made during
   * a run waits for it, then runs with its own time.
   */
  rotateIfDue(nowMs?: number): Promise<void> {
    return this.exclusive(() => this.rotate(Math.floor((nowMs ?? this.rotation.now()) / 1000)));
  }

  /** Runs `step` after every step in progress, never beside one; resolves or rejects with it. */
  protected exclusive<T>(step: () => Promise<T>): Promise<T> {
    const run = this.#running.then(step);
    this.#running = run.then(
      () => {},
      () => {},
    );
    return run;
  }

  /** Records the published kids (in order) and tells the listeners when they changed. */
  protected published(kids: readonly string[]): void {
    const changed = kids.length !== this.#kids.length || kids.some((k, i) => k !== this.#kids[i]);
    this.#kids = [...kids];
    if (!changed) return;
    for (const l of this.#changeListeners) {
      try {
        l();
      } catch (err) {
        this.rotation.logger?.error({ err }, 'signing key change listener threw');
      }
    }
  }

  /** Kids of the published keys (the JWKS), in activation order. */
  kids(): string[] {
    return [...this.#kids];
  }

  /**
   * Calls `listener` whenever the published key set changes: a key published or removed by this
   * process or, seen at the next check, by another replica. Returns an unsubscribe.
   */
  onChange(listener: () => void): () => void {
    this.#changeListeners.add(listener);
    return () => {
      this.#changeListeners.delete(listener);
    };
  }

  /** Checks the schedule every `checkEveryMs` (the timer does not keep the process alive). */
  start(): void {
    if (this.#timer) return;
    this.#timer = setInterval(() => {
      this.rotateIfDue().catch((err: unknown) => this.stepFailed(err));
    }, this.rotation.checkEveryMs);
    this.#timer.unref();
  }

  /** Stops the timer. */
  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
  }

  /** Stops the timer and waits for a running step. */
  async close(): Promise<void> {
    this.stop();
    await this.#running;
  }
}
