import os
import signal
import subprocess
import sys

import optuna
import pytest
import sqlalchemy
import torch

pytest_plugins = ["tests.slurm"]  # the `slurm` fixture: one single-node SLURM cluster per session

# The Ctrl-C tests send SIGINT to the commands they start, as a user's terminal would. A suite started in the
# background without job control (`bash tests/run.sh &` in a script, nohup) inherits SIGINT ignored, and so would
# every command it starts; a handler here is reset to the default in each child at exec, so they hear it again.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Kernel-parity tests need a GPU; on CPU machines they are not collected (not skipped).
collect_ignore_glob = [] if torch.cuda.is_available() else ["gpu/*"]

TINY = [  # a small, fast composer-train configuration for CLI tests
    "model.d_model=32", "model.attention.n_heads=2", "model.mamba2.head_dim=16", "model.mamba2.d_state=16",
    "task.length=32", "task.n_train=256", "task.n_test=64",
    "trainer.batch_size=16", "trainer.progress=false", "trainer.device=cpu",
]


def cli_env() -> dict[str, str]:
    """A user's environment: no HYDRA_FULL_ERROR (the CLI sets it itself), one thread per process."""
    return {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | {"OMP_NUM_THREADS": "1"}


def app_argv(*args: str) -> list[str]:
    """`python -m composer.apps.<command> ...`: the command named first ("search", "extrapolate",
    "pretrain"), else composer-train."""
    if args and args[0] in ("search", "extrapolate", "pretrain"):
        return [sys.executable, "-m", f"composer.apps.{args[0]}", *args[1:]]
    return [sys.executable, "-m", "composer.apps.train", *args]


def observe(db: os.PathLike, study: str) -> optuna.Study | None:
    """A study that another process is writing, opened read-only (an observer that opened it read-write
    could create its tables beside the process starting it); None while it is not there yet."""
    try:
        return optuna.load_study(study_name=study, storage=f"sqlite:///file:{db}?mode=ro&uri=true")
    except (KeyError, sqlalchemy.exc.OperationalError, optuna.exceptions.StorageInternalError):
        return None


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `composer-train` (or `composer-extrapolate` with "extrapolate" first, ...) as a user would."""
    return subprocess.run(app_argv(*args), capture_output=True, text=True, timeout=timeout, env=cli_env())


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread: on a busy 2-core machine a second one only waits
    (10-20x slower training measured). Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny() -> list[str]:
    return list(TINY)
