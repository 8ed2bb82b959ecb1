"""Fault injection for the trainer tests, from outside the product: a launcher that patches the real functions.

    python tests/training/faults.py KIND:STEP[,KIND:STEP] [train.py arguments ...]

registers the pack (as tests/conftest.py does), wraps product functions for the faults named, then runs
``training.cli.main`` with the remaining arguments, exactly as ``train.py`` does. Faults:

* ``kill_during_save:N``: the checkpoint of step N is written through the product's own atomic write
  (``training.state.atomic_file``), but once 4096 bytes of it are on disk the bytes are flushed and fsync'ed and the
  process SIGKILLs itself, so whatever the product leaves behind is what a real kill leaves.
* ``nan_loss:N``: every training micro-batch loss of optimizer step N (``Trainer.micro_loss``; the held-out loss,
  which passes ``net``, is untouched) is multiplied by NaN, so the NaN reaches backward and the trainer's own guard.

Nothing in ``training/`` knows about this module.
"""
import contextlib
import importlib
import os
import runpy
import signal
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KILL_AFTER_BYTES = 4096


def register_pack() -> str:
    """Register the pack folder as its package (the one place this launcher does it); the package name."""
    return runpy.run_path(os.path.join(REPO, "cli", "bootstrap.py"))["register"]()


class _KillingWriter:
    """File wrapper that SIGKILLs the process once ``limit`` bytes have been written."""

    def __init__(self, f, limit: int):
        self.f, self.limit, self.n = f, limit, 0

    def write(self, data) -> int:
        n = self.f.write(data)
        self.n += n
        if self.n >= self.limit:
            self.f.flush()
            os.fsync(self.f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        return n

    def __getattr__(self, name):
        return getattr(self.f, name)


def kill_during_save(pkg: str, step: int) -> None:
    state = importlib.import_module(f"{pkg}.training.state")
    real = state.atomic_file
    target = os.path.basename(state.checkpoint_path("", step))

    @contextlib.contextmanager
    def atomic_file(path, *args, **kwargs):
        with real(path, *args, **kwargs) as f:
            yield _KillingWriter(f, KILL_AFTER_BYTES) if os.path.basename(path) == target else f

    state.atomic_file = atomic_file


def nan_loss(pkg: str, step: int) -> None:
    trainer = importlib.import_module(f"{pkg}.training.loop").Trainer
    real = trainer.micro_loss

    def micro_loss(self, batch, net=None):
        loss = real(self, batch, net=net)
        return loss * float("nan") if net is None and self.step + 1 == step else loss

    trainer.micro_loss = micro_loss


FAULTS = {"kill_during_save": kill_during_save, "nan_loss": nan_loss}


def install(pkg: str, spec: str) -> None:
    """Install the faults of ``spec`` (``kind:step[,kind:step]``)."""
    for item in filter(None, spec.split(",")):
        kind, step = item.split(":", 1)
        FAULTS[kind.strip()](pkg, int(step))


def main(argv) -> int:
    pkg = register_pack()
    install(pkg, argv[0])
    return importlib.import_module(f"{pkg}.training.cli").main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
