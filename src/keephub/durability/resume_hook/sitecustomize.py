"""keephub's resume hook: makes `Trainer.train()` resume from the checkpoint the sidecar restored from the hub.

A retried attempt starts in a fresh sandbox; the sidecar downloads the newest checkpoint on the hub into the
output directory and starts the training command with this directory first on PYTHONPATH and the restored
folder in KEEPHUB_RESUME_CHECKPOINT. Python imports this file at startup (as `sitecustomize`); it only puts
a finder on the import path, so transformers is not imported before the script imports it itself, and a
script that never does is not touched. When `transformers.trainer` is imported, `Trainer.train` (which
TRL's trainers inherit) is wrapped: a call without `resume_from_checkpoint` on a trainer whose output
directory holds the restored checkpoint resumes from it, once per process, and says so in the log. A value
the script passes itself (True, False or a path) is left alone.

Runs inside job sandboxes, in every Python process the job starts: standard library only, and only modules
Python has loaded already at startup (typing and importlib.abc would add 15 ms to each process).
"""

from __future__ import annotations

import functools
import os
import sys
import types

RESUME_ENV = "KEEPHUB_RESUME_CHECKPOINT"  # the sidecar's RESUME_ENV
TRAINER_MODULE = "transformers.trainer"


def _say(message: str) -> None:
    """One whole line, begun on a line of its own (the script may be mid-line), in a single write; from the
    first process only when a launcher (torchrun, accelerate) starts one per device."""
    if os.environ.get("RANK", "0") != "0":
        return
    sys.stdout.write(f"\n[keephub] {message}\n")
    sys.stdout.flush()


class _Resume:
    """The restored checkpoint, for the first `train()` of a trainer whose output directory holds it."""

    def __init__(self, checkpoint: str) -> None:
        self.checkpoint = os.path.abspath(checkpoint)
        self.name = os.path.basename(self.checkpoint)
        self.claimed = False

    def concerns(self, trainer: object) -> bool:
        """True once: for the first trainer that trains in the output directory the checkpoint was restored to."""
        output_dir = getattr(getattr(trainer, "args", None), "output_dir", None)
        if self.claimed or output_dir is None:
            return False
        self.claimed = os.path.realpath(output_dir) == os.path.realpath(os.path.dirname(self.checkpoint))
        return self.claimed

    def choose(self, passed: object) -> object:
        """What `train()` resumes from: the script's own value when it passes one, else the restored checkpoint."""
        if passed is not None:
            _say(f"the script passes resume_from_checkpoint={passed!r} itself, so keephub leaves resuming to it "
                 f"({self.name}, restored from the hub, is in the output directory)")
            return passed
        if not os.path.isfile(os.path.join(self.checkpoint, "trainer_state.json")):
            _say(f"not resuming: {self.name}, restored from the hub, is no longer in the output directory "
                 "(the script removed it); training starts from scratch")
            return None
        _say(f"resuming Trainer.train() from {self.name} restored from the hub (the script does not pass "
             "resume_from_checkpoint; a value it passes takes precedence)")
        return self.checkpoint

    def wrap(self, trainer_class: type) -> None:
        original = trainer_class.train

        @functools.wraps(original)
        def train(trainer: object, resume_from_checkpoint: object = None, *args: object, **kwargs: object) -> object:
            if self.concerns(trainer):
                resume_from_checkpoint = self.choose(resume_from_checkpoint)
            return original(trainer, resume_from_checkpoint, *args, **kwargs)

        trainer_class.train = train


class _PatchAfterLoading:
    """Loads the module with its own loader (which stays its `__loader__`), then wraps its Trainer."""

    def __init__(self, loader: object, resume: _Resume) -> None:
        self.loader = loader
        self.resume = resume

    def create_module(self, spec: object) -> types.ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        self.resume.wrap(module.Trainer)


class _TrainerFinder:
    """Waits for `transformers.trainer` to be imported; every other import passes straight through."""

    def __init__(self, resume: _Resume) -> None:
        self.resume = resume

    def find_spec(self, fullname: str, path: object, target: types.ModuleType | None = None) -> object:
        if fullname != TRAINER_MODULE:
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _PatchAfterLoading(spec.loader, self.resume)
                return spec
        return None


def _run_shadowed_sitecustomize() -> None:
    """This file takes the name `sitecustomize`: run the one it hides (the job's Python's own), if any."""
    here = os.path.dirname(os.path.abspath(__file__))
    this = sys.modules.pop("sitecustomize", None)
    saved = sys.path[:]
    sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or ".") != here]
    try:
        import sitecustomize  # noqa: F401
    except ImportError:
        pass
    finally:
        sys.path[:] = saved
        if this is not None:
            sys.modules["sitecustomize"] = this


def _install() -> None:
    checkpoint = os.environ.get(RESUME_ENV)
    if checkpoint and TRAINER_MODULE not in sys.modules:
        sys.meta_path.insert(0, _TrainerFinder(_Resume(checkpoint)))


_install()
_run_shadowed_sitecustomize()
