"""The sidecar's file watching, on a real output directory: when a save_model() counts as finished."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from keephub.durability.sidecar import LAST_SAVED, Watcher


def save_model(out: Path, weights: bytes, stamp: int) -> None:
    """What Trainer.save_model() leaves: weights and config first, training_args.bin (a torch zip) last."""
    out.mkdir(exist_ok=True)
    (out / "model.safetensors").write_bytes(weights)
    (out / "config.json").write_text("{}")
    with zipfile.ZipFile(out / LAST_SAVED, "w") as archive:
        archive.writestr("archive/data.pkl", b"args")
    for offset, name in enumerate(("model.safetensors", "config.json", LAST_SAVED)):
        os.utime(out / name, ns=(stamp + offset, stamp + offset))


def test_a_finished_save_is_offered_once_per_version(tmp_path: Path) -> None:
    out = tmp_path / "out"
    watcher = Watcher(out, tmp_path / "staging")
    assert watcher.saved_model() is None, "no output directory yet"
    save_model(out, b"w1", 10**18)
    push = watcher.saved_model()
    assert push is not None and push.upload_only and push.revision == "main"
    assert [p.name for p in push.files] == ["config.json", "model.safetensors", LAST_SAVED]
    assert watcher.saved_model() is None, "the same files are not offered twice"
    save_model(out, b"w2-longer", 2 * 10**18)
    again = watcher.saved_model()
    assert again is not None and again.snapshot != push.snapshot


def test_a_save_in_progress_is_not_offered(tmp_path: Path) -> None:
    out = tmp_path / "out"
    watcher = Watcher(out, tmp_path / "staging")
    save_model(out, b"w1", 10**18)
    assert watcher.saved_model() is not None
    # A second save_model() has rewritten the weights but not yet training_args.bin: not finished.
    (out / "model.safetensors").write_bytes(b"half")
    os.utime(out / "model.safetensors", ns=(3 * 10**18, 3 * 10**18))
    assert watcher.saved_model() is None
    # training_args.bin truncated and being rewritten: not a complete zip, not finished.
    (out / LAST_SAVED).write_bytes(b"PK\x03\x04partial")
    os.utime(out / LAST_SAVED, ns=(4 * 10**18, 4 * 10**18))
    assert watcher.saved_model() is None

