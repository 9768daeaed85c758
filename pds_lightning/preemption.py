"""SIGTERM (preemption, `scancel`, `kill`) stops a run promptly, keeps what is complete, and fails the command.

Lightning's convention: SIGTERM sets `trainer.received_sigterm`, the loops raise `SIGTERMException` at the next
batch boundary, callbacks see it in `on_exception`, and an `OnExceptionCheckpoint` is a candidate of
`--ckpt_path last`. On top of it:

- fit: `PreemptionCheckpoint` saves `preempted.ckpt` beside the run's checkpoints when (and only when) the run
  was stopped by SIGTERM, after a whole optimizer step, so `fit ... --ckpt_path last` resumes from it (Lightning
  picks the newest of it and ModelCheckpoint's last.ckpt); a run that then completes removes it.
- validate / test / predict: a batch can take minutes (a long sampler), so `InterruptOnSigterm` raises
  `SIGTERMException` from the signal handler itself, inside the batch. Files are written atomically (temp
  file, then rename), so only whole PNGs stay; the rerun skips them.
- `pds-lightning` turns SIGTERMException (a SystemExit with status 0) into exit status 143 (128 + SIGTERM).
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint, OnExceptionCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

#: The exit status of a run stopped by SIGTERM (the shell's 128 + signal number).
EXIT_STATUS = 128 + int(signal.SIGTERM)


class PreemptionCheckpoint(OnExceptionCheckpoint):
    """Saves `<checkpoint dir>/preempted.ckpt` when fit is stopped by SIGTERM (not on other errors: the state
    after, say, a non-finite loss is no place to resume from); the path is recorded on the exception."""

    def __init__(self, dirpath: str, filename: str = "preempted") -> None:
        super().__init__(dirpath, filename)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit":
            return
        tmp = os.path.join(self.dirpath, f".{self.filename}{self.FILE_EXTENSION}.tmp")
        trainer.save_checkpoint(tmp)  # every rank takes part; rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, self.ckpt_path)  # a whole checkpoint or the previous one, never half of one
        exception.checkpoint = self.ckpt_path
        exception.global_step = trainer.global_step

    def teardown(self, trainer, pl_module, stage: str) -> None:
        # Runs only after a run that completed: a finished fit makes its preemption checkpoint stale (so
        # `--ckpt_path last` takes ModelCheckpoint's); other entry points leave fit's files alone.
        if stage == "fit":
            super().teardown(trainer, pl_module, stage)


def checkpoint_dir(trainer) -> str:
    """Where the run's ModelCheckpoint saves (its dirpath, else <logger dir>/checkpoints, else
    <default_root_dir>/checkpoints), known before fit starts, as Lightning resolves `--ckpt_path last` then."""
    callback = trainer.checkpoint_callback
    if isinstance(callback, ModelCheckpoint) and callback.dirpath is not None:
        return str(callback.dirpath)
    if trainer.loggers:
        logger = trainer.loggers[0]
        version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
        return os.path.join(logger.save_dir or trainer.default_root_dir, str(logger.name), version, "checkpoints")
    return os.path.join(trainer.default_root_dir, "checkpoints")


class InterruptOnSigterm(Callback):
    """Raises SIGTERMException from the SIGTERM handler (after the handler it replaces, e.g. Lightning's, which
    forwards the signal to DDP workers), so a long batch stops now: from `setup` on in validate / test /
    predict (also covering a long setup, such as an alpha pilot), and during fit's validation only (a training
    step is never cut: fit stops at Lightning's next step boundary, with a consistent checkpoint)."""

    def __init__(self) -> None:
        super().__init__()
        self._previous: Any = None

    def _raise(self, signum, frame) -> None:
        if callable(self._previous):
            self._previous(signum, frame)
        raise SIGTERMException(EXIT_STATUS)

    def _install(self, trainer) -> None:
        if trainer.received_sigterm:  # it came before the handler: stop now
            raise SIGTERMException(EXIT_STATUS)
        if threading.current_thread() is threading.main_thread() and self._previous is None:
            self._previous = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, self._raise)

    def _restore(self) -> None:
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            self._install(trainer)

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit":
            self._install(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit":
            self._restore()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._restore()


def sigterm_callbacks(trainer) -> list[Callback]:
    """The callbacks a trainer needs for the behaviour above (the CLI adds them to every run)."""
    return [PreemptionCheckpoint(checkpoint_dir(trainer)), InterruptOnSigterm()]


__all__ = ["EXIT_STATUS", "InterruptOnSigterm", "PreemptionCheckpoint", "checkpoint_dir", "sigterm_callbacks"]
