"""End to end: TRL's SFTTrainer pushes to keephub during training, and the model loads back from it."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.training


def test_sft_trainer_push_to_hub_checkpoint_strategy_then_from_pretrained(server, alice, tmp_path: Path,
                                                                         monkeypatch) -> None:
    import torch
    from huggingface_hub import HfApi
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from keephub.demo.tiny import build_chat_dataset, build_tiny_base

    user, token = alice
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.chdir(tmp_path)
    base = build_tiny_base(tmp_path / "base")
    repo_id = f"{user}/sft-{uuid.uuid4().hex[:6]}"
    config = SFTConfig(
        output_dir=str(tmp_path / "out"),
        push_to_hub=True,
        hub_model_id=repo_id,
        hub_strategy="checkpoint",
        hub_token=token,
        save_strategy="steps",
        save_steps=5,
        max_steps=10,
        per_device_train_batch_size=4,
        bf16=False,
        use_cpu=True,
        activation_checkpointing=False,
        report_to=[],
        logging_steps=5,
    )
    trainer = SFTTrainer(model=str(base), train_dataset=build_chat_dataset(40), args=config)
    trainer.train()
    trainer.push_to_hub()

    api = HfApi(token=token)
    files = set(api.list_repo_files(repo_id))
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert "last-checkpoint/trainer_state.json" in files, "hub_strategy='checkpoint' pushes the latest checkpoint"
    assert "last-checkpoint/optimizer.pt" in files
    titles = [c.title for c in api.list_repo_commits(repo_id)]
    assert any(t.startswith("Training in progress") for t in titles)
    # The final push is skipped client-side when step 10's push already holds identical files.
    assert titles[0] in ("End of training", "Training in progress, step 10, checkpoint"), titles

    pulled = AutoModelForCausalLM.from_pretrained(repo_id, cache_dir=tmp_path / "cache")
    local = trainer.model
    for name, tensor in local.state_dict().items():
        assert torch.equal(tensor.cpu(), pulled.state_dict()[name]), f"weight {name} differs after the round trip"
