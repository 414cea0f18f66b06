# /// script
# dependencies = ["trl>=0.12.0", "peft>=0.7.0"]
# ///
"""The reference's production_train.py, adapted only so that nothing is downloaded from the internet.

The base model and the data set are tiny ones the demo pushed to this keephub beforehand (instead of
Qwen/Qwen2.5-0.5B and trl-lib/Capybara); the run is shortened to a few dozen CPU steps. The Hub
settings are the reference's. It runs as a keephub job, so it must not import keephub.
"""

import os

from datasets import load_dataset
from peft import LoraConfig
from trl import SFTConfig, SFTTrainer

# Verify token is available
assert "HF_TOKEN" in os.environ, "HF_TOKEN not found in environment!"

namespace = os.environ.get("KEEPHUB_DEMO_NAMESPACE", "alice")

# Load dataset
dataset = load_dataset(f"{namespace}/capybara-tiny", split="train")
print(f"✅ Dataset loaded: {len(dataset)} examples")

# Configure with comprehensive Hub settings
config = SFTConfig(
    output_dir="qwen-capybara-sft",
    # Hub configuration
    push_to_hub=True,
    hub_model_id=f"{namespace}/qwen-capybara-sft",
    hub_strategy="checkpoint",  # Push checkpoints
    # Checkpoint configuration
    save_strategy="steps",
    save_steps=10,
    save_total_limit=3,
    # Training settings: a few CPU steps on the tiny model
    max_steps=40,
    per_device_train_batch_size=4,
    bf16=False,
    use_cpu=True,
    activation_checkpointing=False,
    report_to=[],
    # Logging
    logging_steps=10,
    logging_first_step=True,
)

# Train with LoRA
trainer = SFTTrainer(
    model=f"{namespace}/tiny-qwen2",
    train_dataset=dataset,
    args=config,
    peft_config=LoraConfig(r=16, lora_alpha=32),
)

print("🚀 Starting training...")
trainer.train()

print("💾 Pushing final model to Hub...")
trainer.push_to_hub()

print("✅ Training complete!")
print(f"Model available at: {os.environ['HF_ENDPOINT']}/{namespace}/qwen-capybara-sft")
