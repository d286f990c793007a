"""Deciding batches in worker processes, beside the reads and the writes (``--jobs N``).

The cryptography package holds the GIL while it encrypts (measured: two threads doing
AES-SIV take as long as one doing both halves), so on one process the ciphers and the
database I/O take turns. With ``jobs`` worker processes, :func:`~nixmig.reencrypt.core.process_rows`
(decrypt, check the blind index, encrypt, decrypt again) of batch N+1.. runs in a worker
while the main process reads the next batch and its writer thread writes batch N.

- Workers are started with ``spawn`` (never ``fork``: the parent has threads and open
  database connections), lazily, the first time a batch is full: a table smaller than
  one batch is decided in this process.
- Each worker builds its ciphers from recipes (:class:`~nixmig.reencrypt.schemes.LocalKey`):
  the key bytes and the HMAC secret travel on the worker's private pipe, never in argv,
  a file or a log. Vault ciphers have no recipe: with Vault the batches are decided in
  threads of this process (Vault does the crypto; its requests wait on the network, not on
  the GIL), several at once (``VaultSettings.batches``) so that the requests of the next
  batches are in flight while one waits; the runner still writes them one at a time, in order.
- A worker exits when its parent dies, even by SIGKILL (it watches the parent's sentinel),
  so a killed run leaves no process behind.
- Errors raised in a worker (a plaintext value in reencrypt mode, a failed re-check) come
  back as the same error class with the same message.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from nixmig.errors import NixmigError
from nixmig.reencrypt import errors as _errors
from nixmig.reencrypt.errors import ReencryptError
from nixmig.sensitive import Secret

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    from nixmig.reencrypt.core import BatchResult, Options, TablePlan
    from nixmig.reencrypt.schemes import CipherRecipe, Keyring

MAX_JOBS = 8
MAX_DEFAULT_JOBS = 4


def default_jobs(cpus: int | None = None) -> int:
    """One worker per CPU beyond the first (the main process reads and writes), two on two
    CPUs, at most four.

    Measured with bench/reencrypt.py on 2 CPUs: one worker is busy all the time while the
    main process and PostgreSQL leave a third of the other CPU idle; a second worker uses it
    (1M rows: 36,100 rows/s against 32,300). One worker decides ~38,000 rows/s, about what
    the main process can read and write (the identity floor, ~48,000 rows/s), so beyond four
    workers more only cost memory (~30 MB each)."""
    n = cpus if cpus is not None else os.cpu_count() or 2
    return min(MAX_DEFAULT_JOBS, max(1, n - 1, min(n, 2)))


@dataclass(frozen=True)
class _Setup:
    """What a worker needs: cipher recipes, the options, the HMAC secret (bytes, repr masked)."""

    recipes: tuple[CipherRecipe, tuple[CipherRecipe, ...]]
    opts: Options  # without its hmac_secret (a Secret does not pickle, on purpose)
    hmac: bytes | None = None

    def __repr__(self) -> str:
        return "_Setup(...)"


# ---- the worker side ----------------------------------------------------------------------

_worker: tuple[Keyring, Options] | None = None


def _init(setup: _Setup) -> None:
    global _worker
    from nixmig.reencrypt.schemes import Keyring

    secret = Secret(setup.hmac) if setup.hmac is not None else None
    _worker = (Keyring.build(setup.recipes), replace(setup.opts, hmac_secret=secret))
    threading.Thread(target=_exit_with_parent, name="nixmig-parent-watch", daemon=True).start()


def _exit_with_parent() -> None:
    import multiprocessing

    parent = multiprocessing.parent_process()
    if parent is not None:
        parent.join()  # returns when the parent is gone, however it died
        os._exit(1)


def _decide(plan: TablePlan, rows: Sequence[Sequence[Any]]) -> tuple[Any, ...]:
    """process_rows in the worker; the result without the rows (the parent has them)."""
    from nixmig.reencrypt.core import process_rows

    assert _worker is not None, "worker not initialised"
    keyring, opts = _worker
    try:
        b = process_rows(rows, plan, keyring, opts)
    except NixmigError as exc:
        return ("error", type(exc).__name__, exc.what, exc.where, exc.hint)
    return ("ok", b.states, b.values, b.changed, b.bad, b.failures)


# ---- the parent side ----------------------------------------------------------------------


def batches_in_flight(keyring: Keyring) -> int:
    """Batches to decide at once in threads: 0 unless a cipher does its work elsewhere (Vault)."""
    ciphers = (keyring.new, *keyring.old)
    return max((int(getattr(c, "batches_in_flight", 0)) for c in ciphers), default=0)


class Decider:
    """Decides batches: in worker processes when ``opts.jobs`` > 0 and every cipher has a
    recipe; in threads, several at once, when a cipher is Vault's; else in this process.
    :meth:`submit` returns a future either way, so the runner's pipeline is the same."""

    def __init__(self, keyring: Keyring, opts: Options) -> None:
        self.keyring, self.opts = keyring, opts
        recipes = keyring.recipes() if opts.jobs > 0 else None
        self._setup: _Setup | None = None
        if recipes is not None:
            hmac = opts.hmac_secret.reveal() if opts.hmac_secret is not None else None
            self._setup = _Setup(recipes, replace(opts, hmac_secret=None), hmac)
        self._pool: ProcessPoolExecutor | None = None
        self._threads = batches_in_flight(keyring) if self._setup is None else 0
        self._thread_pool: ThreadPoolExecutor | None = None

    @property
    def depth(self) -> int:
        """How many batches may be deciding while the main process reads the next one."""
        return self.opts.jobs if self._setup is not None else self._threads

    def submit(self, plan: TablePlan, rows: Sequence[Sequence[Any]]) -> Future[BatchResult]:
        if self._threads:
            if self._thread_pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._thread_pool = ThreadPoolExecutor(self._threads, thread_name_prefix="nixmig-decide")
            from nixmig.reencrypt.core import process_rows

            return self._thread_pool.submit(process_rows, rows, plan, self.keyring, self.opts)
        if self._setup is None or (self._pool is None and len(rows) < self.opts.batch_size):
            return self._here(plan, rows)
        pool = self._start()
        outer: Future[BatchResult] = Future()
        inner = pool.submit(_decide, plan, rows)
        inner.add_done_callback(lambda f: _complete(outer, f, rows))
        return outer

    def _here(self, plan: TablePlan, rows: Sequence[Sequence[Any]]) -> Future[BatchResult]:
        from nixmig.reencrypt.core import process_rows

        fut: Future[BatchResult] = Future()
        try:
            fut.set_result(process_rows(rows, plan, self.keyring, self.opts))
        except Exception as exc:
            fut.set_exception(exc)
        return fut

    def _start(self) -> ProcessPoolExecutor:
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            setup = self._setup
            assert setup is not None
            self._pool = ProcessPoolExecutor(
                max_workers=self.opts.jobs,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init,
                initargs=(setup,),
            )
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._thread_pool is not None:
            self._thread_pool.shutdown(wait=True, cancel_futures=True)
            self._thread_pool = None


def _complete(outer: Future[BatchResult], inner: Future[tuple[Any, ...]], rows: Sequence[Sequence[Any]]) -> None:
    from concurrent.futures.process import BrokenProcessPool

    from nixmig.reencrypt.core import BatchResult

    try:
        res = inner.result()
    except BrokenProcessPool:
        outer.set_exception(
            ReencryptError(
                "a worker process died",
                hint="nothing of its batch was written; run again (it resumes), "
                "or with --jobs 0 to decrypt and encrypt in this process",
            )
        )
        return
    except BaseException as exc:
        outer.set_exception(exc)
        return
    if res[0] == "error":
        _, cls_name, what, where, hint = res
        cls = getattr(_errors, cls_name, None)
        if not (isinstance(cls, type) and issubclass(cls, NixmigError)):
            cls = ReencryptError
        outer.set_exception(cls(what, where=where, hint=hint))
        return
    _, states, values, changed, bad, failures = res
    outer.set_result(BatchResult(rows, states, values, changed, bad, failures))
