"""Kill a real ``python -m nenya.train`` at chosen and at random moments, resume it, and compare bit for bit.

Each killed run (tests/kill_runner.py sends itself SIGKILL, or SIGTERM, at the N-th call of a function)
is continued with ``--resume`` and must end exactly as an uninterrupted run: the same model and
optimizer tensors in last.pth, best.pth and ckpt_epoch_2.pth, the same curves and metrics.json, and
no temporary file left. The random moments are drawn from NENYA_KILL_SEED (printed; set it to
repeat a run). Run folders live in /dev/shm when it is there (checkpoints are fsynced: RAM is fast).
"""

import os
import pathlib
import random
import signal
import subprocess
import sys
import tempfile

import pytest
import torch

from conftest import assert_same_run
from nenya.train import cli as train_cli
from nenya.train import main as train_main
from test_methods_mae import mae_opts

pytestmark = pytest.mark.slow

HERE = os.path.dirname(os.path.abspath(__file__))
RUNNER = os.path.join(HERE, "kill_runner.py")
EPOCHS, STEPS_PER_EPOCH = 3, 2  # 8 training cubes, batch 4
SEED = int(os.environ.get("NENYA_KILL_SEED", random.SystemRandom().randrange(10**6)))

# (moment, N, signal): where the run is stopped
FIXED = [
    ("validate", 1, "KILL"),  # the validation at initialisation: before the first checkpoint
    ("step", 1, "KILL"),  # the first training step: before the first checkpoint
    ("save:last.pth", 1, "KILL"),  # writing the first last.pth: its temporary file is left, nothing else
    ("save:best.pth", 2, "KILL"),  # writing best.pth of the last epoch, after its last.pth: resume must restore it
    ("save:ckpt_epoch_2.pth", 1, "KILL"),  # writing ckpt_epoch_2.pth, after last.pth and best.pth
    ("figure", 2, "KILL"),  # writing the second figure of epoch 2, before its checkpoint
    ("step", 4, "TERM"),  # a scheduler's SIGTERM in the last step of epoch 2
    ("figure", 7, "KILL"),  # writing training_plots.png, after the last checkpoint: only the end is redone
]


def random_moments(seed: int) -> list:
    """Two moments drawn from every step, curve write and checkpoint write of the run."""
    rng = random.Random(seed)
    kinds = [("step", EPOCHS * STEPS_PER_EPOCH), ("curves", 80), ("save:last.pth", EPOCHS), ("figure", 7)]
    moments = []
    for signame in ("KILL", "TERM"):
        name, calls = rng.choice(kinds)
        moments.append((name, rng.randint(1, calls), signame))
    return moments


# (source, moment, N, signal); the source keeps run folders apart when a random moment repeats a fixed one
MOMENTS = [("fixed", *moment) for moment in FIXED] + [(f"random{SEED}", *moment) for moment in random_moments(SEED)]
IDS = [f"{name}-{count}-{sig}" for name, count, sig in FIXED] + \
      [f"random-{name}-{count}-{sig}-seed{SEED}" for name, count, sig in random_moments(SEED)]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """(opts file, run root, the uninterrupted run's folder), run folders in RAM when possible."""
    parent = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="nenya_kill_", dir=parent) as folder:
        root = tmp_path_factory.mktemp("kill") if parent is None else pathlib.Path(folder)
        opts = mae_opts(root, epochs=EPOCHS, save_freq=2, valid_freq=2)
        train_main(opts, overrides={"model_name": "whole"}, verbose=False)
        print(f"\nNENYA_KILL_SEED={SEED}")
        yield opts, root / "models", root / "models" / "whole"


def kill_at(opts, name, moment, count, signame):
    """Run the real command line, stopped by ``signame`` at the ``count``-th ``moment``; return the process."""
    # the child computes with as many threads as this process (the uninterrupted run): float sums split
    # over a different number of threads differ in the last bits
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), HERE]),
               OMP_NUM_THREADS=str(torch.get_num_threads()))
    return subprocess.run([sys.executable, RUNNER, moment, str(count), signame, "--", opts, f"model_name={name}"],
                          capture_output=True, text=True, env=env, timeout=300)


RESUMED = []


@pytest.mark.parametrize("source, moment, count, signame", MOMENTS, ids=IDS)
def test_killed_run_resumes_bit_exact(base, source, moment, count, signame, capsys):
    opts, root, whole = base
    name = f"killed_{source}_{moment.replace(':', '_')}_{count}_{signame}"
    done = kill_at(opts, name, moment, count, signame)
    if signame == "KILL":
        assert done.returncode == -signal.SIGKILL, (done.returncode, done.stderr[-2000:])
    else:  # SIGTERM is Ctrl-C: last.pth kept, the --resume hint, exit 143
        assert done.returncode == 143, (done.returncode, done.stderr[-2000:])
        assert "nenya: terminated (SIGTERM)" in done.stderr and "--resume" in done.stderr, done.stderr[-2000:]
        assert "Traceback" not in done.stderr
    folder = root / name
    stopped_before_first_checkpoint = not (folder / "last.pth").exists()
    capsys.readouterr()
    assert train_cli([opts, f"model_name={name}", "--resume"]) == 0
    err = capsys.readouterr().err
    if stopped_before_first_checkpoint:
        assert "starting the run from the beginning" in err, err[-2000:]
    assert_same_run(whole, folder)
    RESUMED.append((moment, count, signame, stopped_before_first_checkpoint))


def test_resumed_moments_summary(capsys):
    """At least five moments per run, among them one before the first checkpoint and one in a checkpoint write."""
    if len(RESUMED) < len(MOMENTS):
        pytest.skip("not every moment ran in this session")
    with capsys.disabled():
        print(f"\nkill moments resumed bit-exact: {len(RESUMED)} (seed {SEED}): {RESUMED}")
    assert len(RESUMED) >= 5
    assert any(before for *_, before in RESUMED)
    assert any(moment.startswith("save:") for moment, *_ in RESUMED)


def test_an_external_sigterm_keeps_last_pth_and_exits_143(base):
    """A SIGTERM sent from outside (as a scheduler does) while the run trains."""
    opts, root, _ = base
    env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE), OMP_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, "-m", "nenya.train", opts, "model_name=term", "epochs=200"],
                               stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    for line in process.stderr:  # wait until the first epoch is saved and the second one trains
        lines.append(line)
        if line.startswith("train: [2]"):
            process.send_signal(signal.SIGTERM)
            break
    rest = process.communicate(timeout=120)[1]
    stderr = "".join(lines) + rest
    assert process.returncode == 143, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == "nenya: terminated (SIGTERM)"
    assert "terminated (SIGTERM) (last.pth is kept); continue with: python -m nenya.train" in stderr
    assert "Traceback" not in stderr
    state = torch.load(root / "term" / "last.pth", weights_only=True)
    assert state["epoch"] >= 1 and not list((root / "term").rglob("*.tmp"))
