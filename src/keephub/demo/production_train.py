# /// script
# dependencies = ["trl>=0.12.0", "peft>=0.7.0"]
# ///
"""The guide's production_train.py, made to run with no downloads inside a keephub job.

Only the inputs changed: the base model is a local folder made by
`keephub.demo.tiny.build_tiny_base`, the data a local JSON-lines file of Capybara-shaped
chats, and the repository id comes from the job. The Hub settings (push every save, final
push) are kept, since they are what the job exercises. The run is shortened and set up for
CPU so that it ends in seconds. This script must not import keephub: it runs in a sandbox
that has only the training libraries.
"""

import os

from datasets import load_dataset
from peft import LoraConfig
from trl import SFTConfig, SFTTrainer

# Verify token is available
assert "HF_TOKEN" in os.environ, "HF_TOKEN not found in environment!"

base_model = os.environ["KEEPHUB_DEMO_BASE_MODEL"]
model_id = os.environ["KEEPHUB_DEMO_MODEL_ID"]

dataset = load_dataset("json", data_files=os.environ["KEEPHUB_DEMO_DATASET"], split="train")
print(f"✅ Dataset loaded: {len(dataset)} examples")

config = SFTConfig(
    output_dir=model_id.split("/")[-1],
    # Hub configuration
    push_to_hub=True,
    hub_model_id=model_id,
    hub_strategy="every_save",
    # Checkpoint configuration
    save_strategy="steps",
    save_steps=10,
    save_total_limit=2,
    # Training settings
    max_steps=40,
    per_device_train_batch_size=8,
    # SFTConfig defaults to bf16 and activation checkpointing, both slow or refused on CPU.
    bf16=False,
    use_cpu=True,
    activation_checkpointing=False,
    # Logging
    logging_steps=10,
    logging_first_step=True,
    report_to=[],
)

# Train with LoRA
trainer = SFTTrainer(
    model=base_model,
    train_dataset=dataset,
    args=config,
    peft_config=LoraConfig(r=16, lora_alpha=32),
)

print("🚀 Starting training...")
trainer.train()

print("💾 Pushing final model to Hub...")
trainer.push_to_hub()

print("✅ Training complete!")
print(f"Model available at: {os.environ.get('HF_ENDPOINT', 'https://huggingface.co').rstrip('/')}/{model_id}")
