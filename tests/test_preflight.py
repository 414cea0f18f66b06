"""Preflight: static checks of a training script and its job spec, before anything runs.

Pure unit tests: no server. The config classes are the installed transformers/TRL ones, imported
once (a few seconds) and cached.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import textwrap
from pathlib import Path

import pytest

from keephub.durability.preflight import UNKNOWN, Check, PreflightReport, WriteAccess, analyze_script, preflight

REFERENCE = Path("/work/shared/reference/saving-training-results-to-hub.md")

# The reference's "Complete Example" and "Full Production Setup", verbatim.
COMPLETE_EXAMPLE = '''# train.py
# /// script
# dependencies = ["trl"]
# ///

from trl import SFTTrainer, SFTConfig
from datasets import load_dataset

dataset = load_dataset("trl-lib/Capybara", split="train")

# Configure with Hub push
config = SFTConfig(
    output_dir="my-model",
    num_train_epochs=3,
    
    # ✅ CRITICAL: Hub push configuration
    push_to_hub=True,
    hub_model_id="myusername/my-trained-model",
    
    # Optional: Push strategy
    push_to_hub_model_id="myusername/my-trained-model",
    push_to_hub_organization=None,
    push_to_hub_token=None,  # Uses environment token
)

trainer = SFTTrainer(
    model="Qwen/Qwen2.5-0.5B",
    train_dataset=dataset,
    args=config,
)

trainer.train()

# ✅ Push final model
trainer.push_to_hub()

print("✅ Model saved to: https://huggingface.co/myusername/my-trained-model")
'''

PRODUCTION_TRAIN = '''# production_train.py
# /// script
# dependencies = ["trl>=0.12.0", "peft>=0.7.0"]
# ///

from datasets import load_dataset
from peft import LoraConfig
from trl import SFTTrainer, SFTConfig
import os

# Verify token is available
assert "HF_TOKEN" in os.environ, "HF_TOKEN not found in environment!"

# Load dataset
dataset = load_dataset("trl-lib/Capybara", split="train")
print(f"✅ Dataset loaded: {len(dataset)} examples")

# Configure with comprehensive Hub settings
config = SFTConfig(
    output_dir="qwen-capybara-sft",
    
    # Hub configuration
    push_to_hub=True,
    hub_model_id="myusername/qwen-capybara-sft",
    hub_strategy="checkpoint",  # Push checkpoints
    
    # Checkpoint configuration
    save_strategy="steps",
    save_steps=100,
    save_total_limit=3,
    
    # Training settings
    num_train_epochs=3,
    per_device_train_batch_size=4,
    
    # Logging
    logging_steps=10,
    logging_first_step=True,
)

# Train with LoRA
trainer = SFTTrainer(
    model="Qwen/Qwen2.5-0.5B",
    train_dataset=dataset,
    args=config,
    peft_config=LoraConfig(r=16, lora_alpha=32),
)

print("🚀 Starting training...")
trainer.train()

print("💾 Pushing final model to Hub...")
trainer.push_to_hub()

print("✅ Training complete!")
print(f"Model available at: https://huggingface.co/myusername/qwen-capybara-sft")
'''


def run(source: str, **options) -> PreflightReport:
    options.setdefault("secret_names", ["HF_TOKEN"])
    options.setdefault("timeout_seconds", 3600)
    return preflight(textwrap.dedent(source), **options)


def check(report: PreflightReport, name: str) -> Check:
    found = [c for c in report.checks if c.name == name]
    assert len(found) == 1, report.render()
    return found[0]


def sft(arguments: str, after: str = "") -> str:
    """A minimal script around one SFTConfig call."""
    return f"from trl import SFTConfig, SFTTrainer\nconfig = SFTConfig({arguments})\n{after}"


# -- the reference's examples --------------------------------------------------------------------------------


def test_embedded_examples_are_the_references_verbatim() -> None:
    if not REFERENCE.exists():
        pytest.skip("the reference document is not on this machine")
    blocks = re.findall(r"```python\n(.*?)```", REFERENCE.read_text(), re.S)
    assert COMPLETE_EXAMPLE in blocks
    assert PRODUCTION_TRAIN in blocks


def test_complete_example_fails_on_each_removed_argument_with_its_fix() -> None:
    report = preflight(COMPLETE_EXAMPLE, secret_names=["HF_TOKEN"], timeout_seconds=7200)
    assert {c.name for c in report.failed} == {
        "argument push_to_hub_model_id", "argument push_to_hub_organization", "argument push_to_hub_token"}
    for failed in report.failed:
        assert "has no argument" in failed.message and "TypeError" in failed.message
    model_id = check(report, "argument push_to_hub_model_id")
    assert "line 21" in model_id.message
    assert model_id.fix == "remove it; hub_model_id='myusername/my-trained-model' already names the same repo"
    organization = check(report, "argument push_to_hub_organization").fix
    assert organization is not None and 'hub_model_id="<org>/my-trained-model"' in organization
    token = check(report, "argument push_to_hub_token")
    assert token.fix == "remove it; the token comes from the HF_TOKEN secret"
    assert check(report, "push_to_hub").status == "ok"
    assert check(report, "hub_model_id").status == "ok"


def test_removed_arguments_with_values_are_mapped_to_hub_model_id_and_hub_token() -> None:
    report = run(sft('push_to_hub=True, push_to_hub_model_id="alice/m", push_to_hub_organization="acme", '
                     'push_to_hub_token=token'))
    renamed = check(report, "argument push_to_hub_model_id")
    assert renamed.fix == "rename it to hub_model_id: hub_model_id='alice/m'"
    assert check(report, "argument push_to_hub_organization").fix == (
        'remove it and name the organization in hub_model_id="acme/<name>"')
    assert "HF_TOKEN secret" in (check(report, "argument push_to_hub_token").fix or "")


def test_production_example_passes_with_token_secret_and_write_access() -> None:
    report = preflight(PRODUCTION_TRAIN, secret_names=["HF_TOKEN"], timeout_seconds=6 * 3600,
                       can_write=lambda repo_id: WriteAccess(True))
    assert not report.failed, report.render()
    assert not report.warnings, report.render()
    assert check(report, "write access").message.endswith("can write to myusername/qwen-capybara-sft")
    facts = report.facts
    assert facts is not None
    assert (facts.output_dir, facts.hub_model_id) == ("qwen-capybara-sft", "myusername/qwen-capybara-sft")
    assert (facts.push_to_hub, facts.hub_strategy, facts.save_strategy, facts.save_steps) == (
        True, "checkpoint", "steps", 100)
    assert facts.lines("push") == [53] and not facts.resumes


# -- check 1: push_to_hub ------------------------------------------------------------------------------------


def test_missing_push_to_hub_fails_with_the_settings_to_add() -> None:
    failed = check(run(sft('output_dir="qwen-sft"')), "push_to_hub")
    assert failed.status == "fail"
    assert "nothing is uploaded" in failed.message
    assert failed.fix == ('pass push_to_hub=True, hub_model_id="<namespace>/qwen-sft" '
                          "to SFTConfig(...) (line 2)")


def test_keephub_saving_makes_push_to_hub_unnecessary_but_not_the_token() -> None:
    """keephub's sidecar pushes with the job's HF_TOKEN: without it every push fails with 401."""
    assert not run(sft('output_dir="out"'), keephub_saving=True).failed
    report = run(sft('output_dir="out"'), keephub_saving=True, secret_names=[])
    assert check(report, "push_to_hub").message == "keephub will push checkpoints itself"
    assert check(report, "HF_TOKEN").status == "fail"


def test_a_final_push_alone_is_a_warning() -> None:
    found = check(run(sft('hub_model_id="alice/m"', "trainer.push_to_hub()\n")), "push_to_hub")
    assert found.status == "warn" and "line 3" in found.message


def test_push_to_hub_with_nothing_that_saves_uploads_nothing() -> None:
    found = check(run(sft('push_to_hub=True, hub_model_id="alice/m", save_strategy="no"')), "push_to_hub")
    assert found.status == "fail" and "nothing reaches the Hub" in found.message
    assert check(run(sft('push_to_hub=True, hub_model_id="alice/m", save_strategy="no"',
                         "trainer.push_to_hub()\n")), "push_to_hub").status == "ok"


def test_push_to_hub_set_after_construction_counts() -> None:
    report = run(sft('hub_model_id="alice/m"', "config.push_to_hub = True\n"))
    assert check(report, "push_to_hub").status == "ok"


# -- check 2: hub_model_id -----------------------------------------------------------------------------------


def test_hub_model_id_through_a_variable_and_an_f_string() -> None:
    facts = analyze_script('from trl import SFTConfig\nuser = "alice"\nrepo = f"{user}/sft-run"\n'
                           "config = SFTConfig(hub_model_id=repo, output_dir=repo.split('/')[-1])\n")
    assert (facts.hub_model_id, facts.output_dir) == ("alice/sft-run", "sft-run")


def test_hub_model_id_from_an_environment_default_or_the_job_environment() -> None:
    source = ('import os\nfrom trl import SFTConfig\n'
              'SFTConfig(hub_model_id=os.environ.get("HUB_ID", "alice/m"))\n')
    assert analyze_script(source).hub_model_id == "alice/m"
    assert analyze_script(source, environment={"HUB_ID": "bob/x"}).hub_model_id == "bob/x"
    ok = check(run(source), "hub_model_id")
    assert ok.status == "ok" and ok.message == "alice/m (from os.environ.get('HUB_ID', 'alice/m'))"


def test_unresolvable_hub_model_id_is_unknown_not_guessed() -> None:
    source = 'from trl import SFTConfig\nSFTConfig(push_to_hub=True, hub_model_id=f"{args.user}/m")\n'
    assert analyze_script(source).hub_model_id is UNKNOWN
    warned = check(run(source, can_write=lambda repo_id: pytest.fail("must not be called")), "hub_model_id")
    assert warned.status == "warn" and "cannot resolve" in warned.message


def test_values_assigned_differently_in_branches_are_unknown() -> None:
    facts = analyze_script(textwrap.dedent('''\
        from trl import SFTConfig
        if small:
            repo = "alice/small"
        else:
            repo = "alice/large"
        SFTConfig(hub_model_id=repo)

        def main(repo):
            return SFTConfig(hub_model_id=repo)

        if __name__ == "__main__":
            name = "alice/main"
            SFTConfig(hub_model_id=name)
        '''))
    assert [c.value("hub_model_id") for c in facts.configs] == [UNKNOWN, UNKNOWN, "alice/main"]


def test_literal_dict_unpacking_is_followed_and_anything_else_is_reported() -> None:
    source = ('from trl import SFTConfig\n'
              'hub = dict(push_to_hub=True, hub_model_id="alice/m")\n'
              'SFTConfig(output_dir="out", **hub)\n')
    facts = analyze_script(source)
    assert (facts.push_to_hub, facts.hub_model_id) == (True, "alice/m")
    warned = check(run(sft("**vars(args)")), "push_to_hub")
    assert warned.status == "warn" and "**vars(args)" in warned.message


def test_hub_model_id_with_a_space_fails_and_uppercase_warns() -> None:
    spaced = check(run(sft('push_to_hub=True, hub_model_id="alice/my model"')), "hub_model_id")
    assert spaced.status == "fail" and "not allowed" in spaced.message
    assert spaced.fix == 'hub_model_id="alice/my-model"'
    upper = check(run(sft('push_to_hub=True, hub_model_id="Alice/MyModel"')), "hub_model_id")
    assert upper.status == "warn" and upper.fix == 'hub_model_id="Alice/mymodel"'
    bare = check(run(sft('push_to_hub=True, hub_model_id="mymodel"')), "hub_model_id")
    assert bare.status == "warn" and "no namespace" in bare.message


def test_missing_hub_model_id_says_where_the_trainer_would_push() -> None:
    failed = check(run(sft('push_to_hub=True, output_dir="runs/qwen-sft"')), "hub_model_id")
    assert failed.status == "fail" and "<token owner>/qwen-sft" in failed.message
    assert failed.fix == 'pass hub_model_id="<namespace>/qwen-sft" to SFTConfig(...)'


def test_write_access_denied_reports_the_reason() -> None:
    reason = "user 'bob' has no write access to namespace 'acme'"
    report = run(sft('push_to_hub=True, hub_model_id="acme/m"'), can_write=lambda repo_id: WriteAccess(False, reason))
    failed = check(report, "write access")
    assert failed.status == "fail" and failed.message.endswith(reason)


# -- check 3: HF_TOKEN ---------------------------------------------------------------------------------------


def test_missing_hf_token_secret_fails_with_the_secret_to_add() -> None:
    failed = check(run(sft('push_to_hub=True, hub_model_id="alice/m"'), secret_names=[]), "HF_TOKEN")
    assert failed.status == "fail" and "401" in failed.message
    assert failed.fix is not None and 'secrets={"HF_TOKEN": "$HF_TOKEN"}' in failed.fix


def test_hard_coded_token_is_a_warning_and_never_echoed() -> None:
    token = "hf_" + "a1B2c3D4e5" * 4
    report = run(sft(f'push_to_hub=True, hub_model_id="alice/m", hub_token="{token}"'), secret_names=[])
    warned = check(report, "token in code")
    assert warned.status == "warn" and "line 2" in warned.message
    assert check(report, "HF_TOKEN").status == "warn"
    assert token not in report.render() and token not in json.dumps(report.to_wire())


# -- check 4: arguments the installed classes do not have ----------------------------------------------------


def test_dpo_config_typo_gets_a_did_you_mean() -> None:
    report = run('from trl import DPOConfig\nDPOConfig(output_dir="o", learning_rat=1e-5, beta=0.1)\n')
    failed = check(report, "argument learning_rat")
    assert failed.status == "fail" and "DPOConfig in trl" in failed.message
    assert failed.fix == "did you mean 'learning_rate'? e.g. learning_rate=1e-05"


def test_a_config_class_the_installed_trl_moved_is_reported_with_its_new_import() -> None:
    failed = check(run('from trl import ORPOConfig\nORPOConfig(output_dir="o")\n'), "import ORPOConfig")
    assert failed.status == "fail"
    assert failed.fix == "from trl.experimental.orpo import ORPOConfig"


# -- check 5: saving during long jobs, resuming --------------------------------------------------------------


def test_what_cannot_be_read_is_not_checked_and_says_so() -> None:
    """A ✅ is never a guess: settings keephub cannot resolve before the run are ⚠️ "not checked"."""
    report = run(sft('push_to_hub=True, hub_model_id="alice/m", save_strategy=args.save, '
                     'hub_strategy=args.hub, **extra'), timeout_seconds=1800)
    for name in ("checkpoints", "hub_strategy", "arguments"):
        found = check(report, name)
        assert found.status == "warn" and "not checked" in found.message, report.render()
    assert "**extra" in check(report, "arguments").message


def test_save_strategy_no_warns_only_for_long_jobs() -> None:
    arguments = 'push_to_hub=True, hub_model_id="alice/m", save_strategy="no"'
    long = check(run(sft(arguments, "trainer.push_to_hub()\n"), timeout_seconds=6 * 3600), "checkpoints")
    assert long.status == "warn" and "6h" in long.message and long.fix and "save_steps" in long.fix
    short = check(run(sft(arguments, "trainer.push_to_hub()\n"), timeout_seconds=1800), "checkpoints")
    assert short.status == "ok"


def test_resume_without_a_checkpoint_hub_strategy_warns() -> None:
    after = "trainer.train(resume_from_checkpoint=True)\n"
    warned = check(run(sft('push_to_hub=True, hub_model_id="alice/m"', after)), "hub_strategy")
    assert warned.status == "warn" and "nothing to resume from" in warned.message
    assert warned.fix is not None and warned.fix.startswith('hub_strategy="checkpoint"')
    resumable = sft('push_to_hub=True, hub_model_id="alice/m", hub_strategy="checkpoint"', after)
    assert check(run(resumable), "hub_strategy").status == "ok"


def test_a_resume_belongs_to_the_trainer_it_is_called_on() -> None:
    report = run(textwrap.dedent('''\
        from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer
        sft = SFTConfig(push_to_hub=True, hub_model_id="alice/sft")
        SFTTrainer(model="m", args=sft).train()
        dpo = DPOConfig(push_to_hub=True, hub_model_id="alice/dpo")
        trainer = DPOTrainer(model="m", args=dpo)
        trainer.train(resume_from_checkpoint=True)
        '''))
    assert check(report, "hub_strategy (SFTConfig, line 2)").status == "ok"
    assert check(report, "hub_strategy (DPOConfig, line 4)").status == "warn"


# -- check 6: the target repo --------------------------------------------------------------------------------


@pytest.mark.parametrize(("files", "status", "words"), [
    (None, "ok", "is new"),
    (["README.md", ".gitattributes"], "ok", "empty"),
    (["README.md", "config.json", "last-checkpoint/optimizer.pt"], "ok", "trained model"),
    (["README.md", "data/train.parquet", "app.py"], "warn", "do not look like a trained model"),
])
def test_target_repo_content(files: list[str] | None, status: str, words: str) -> None:
    found = check(run(sft('push_to_hub=True, hub_model_id="alice/m"'), repo_files=lambda repo_id: files),
                  "target repo")
    assert found.status == status and words in found.message
    if status == "warn":
        assert found.fix == 'push to a new repo, e.g. hub_model_id="alice/m-sft"'


# -- the script as a whole, and the report -------------------------------------------------------------------


def test_syntax_error_is_reported_with_its_line() -> None:
    report = run("from trl import SFTConfig\nconfig = SFTConfig(\n")
    failed = check(report, "script")
    assert failed.status == "fail" and "SyntaxError at line 2" in failed.message
    assert report.facts is None


def test_no_training_config_is_a_warning_that_names_the_parser() -> None:
    warned = check(run("from trl import TrlParser, SFTConfig\nparser = TrlParser((SFTConfig,))\n"),
                   "training config")
    assert warned.status == "warn" and "TrlParser" in warned.message
    assert "could not find a TrainingArguments/SFTConfig call" in warned.message


def test_render_is_one_line_per_check_with_fixes_indented() -> None:
    report = run(sft('push_to_hub=True, hub_model_id="alice/m"'), secret_names=[])
    trl = f"trl {importlib.metadata.version('trl')}"
    hf_token = check(report, "HF_TOKEN")
    assert report.render() == "\n".join([
        "✅ push_to_hub: push_to_hub=True (line 2)",
        "✅ hub_model_id: alice/m",
        "❌ HF_TOKEN: not among the job's secrets: pushing fails with 401 Unauthorized, after the training "
        "time is spent",
        '   fix: add secrets={"HF_TOKEN": "$HF_TOKEN"} to the job; keephub replaces $HF_TOKEN with a token '
        "for it",
        f"✅ arguments: every argument passed exists in {trl}'s SFTConfig",
        "✅ checkpoints: every 500 steps (default)",
        "✅ hub_strategy: 'every_save' (default): the model is pushed at every save",
    ])
    wire = json.loads(json.dumps(report.to_wire()))
    assert (wire["ok"], wire["failed"], wire["warnings"]) == (False, 1, 0)
    assert wire["checks"][2] == {"name": "HF_TOKEN", "status": "fail", "message": hf_token.message,
                                 "fix": hf_token.fix}


# -- resume: how a retried attempt picks up the checkpoint keephub restores -----------------------------------


def test_preflight_says_how_a_retried_attempt_will_resume() -> None:
    def resume(source: str) -> Check:
        return check(run(source, keephub_saving=True), "resume")

    plain = resume(PRODUCTION_TRAIN)
    assert plain.status == "ok" and plain.message == (
        "keephub will resume Trainer.train() (line 50) from the newest checkpoint on the hub when an attempt "
        "is retried")
    trainer = "trainer = SFTTrainer(model='m', args=config)\n"
    own = resume(sft('output_dir="out"', trainer + "trainer.train(resume_from_checkpoint=True)\n"))
    assert own.status == "ok" and own.message.startswith("the script passes resume_from_checkpoint itself (line 4)")
    fresh = resume(sft('output_dir="out"', trainer + "trainer.train(resume_from_checkpoint=False)\n"))
    assert fresh.status == "warn" and "a retried attempt starts from scratch" in fresh.message
    loop = resume("from accelerate import Accelerator\naccelerator = Accelerator()\nmodel.train()\n"
                  "accelerator.save_state('out/checkpoint-1')\n")
    assert loop.status == "warn" and loop.message.startswith("not a transformers Trainer")
    assert loop.fix is not None and "accelerator.load_state" in loop.fix
    assert not [c for c in run(PRODUCTION_TRAIN).checks if c.name == "resume"], "only when keephub guards the job"
