"""Build a tiny but real Qwen2 chat model and Capybara-shaped chat data, fully offline.

No model or data set can be downloaded where keephub is built and tested, yet the
hub's training-job path should be exercised with a real `transformers` model, a real
tokenizer and a real chat template. Everything here is generated locally from fixed
seeds, so two builds produce the same files.
"""

import json
import random
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import TypedDict

import torch
from datasets import Dataset
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config

EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = [PAD_TOKEN, "<|im_start|>", EOS_TOKEN]
# An upper bound: the generated chats run out of merges at about 700 tokens.
VOCAB_SIZE = 1024
MAX_LENGTH = 2048
SEED = 0

# transformers 5 rebuilds this exact pipeline when it reloads a `model_type=qwen2` folder
# (see `Qwen2Tokenizer`); a tokenizer trained with any other pre-tokenizer would split
# text differently once reloaded.
QWEN_SPLIT_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# The chat template's default system prompt, so it tokenizes into few tokens.
DEFAULT_SYSTEM_PROMPT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

COUNTRIES: list[tuple[str, str, str]] = [
    ("France", "Paris", "Europe"),
    ("Germany", "Berlin", "Europe"),
    ("Italy", "Rome", "Europe"),
    ("Spain", "Madrid", "Europe"),
    ("Portugal", "Lisbon", "Europe"),
    ("Poland", "Warsaw", "Europe"),
    ("Norway", "Oslo", "Europe"),
    ("Sweden", "Stockholm", "Europe"),
    ("Greece", "Athens", "Europe"),
    ("Ireland", "Dublin", "Europe"),
    ("Japan", "Tokyo", "Asia"),
    ("China", "Beijing", "Asia"),
    ("India", "New Delhi", "Asia"),
    ("Thailand", "Bangkok", "Asia"),
    ("Vietnam", "Hanoi", "Asia"),
    ("South Korea", "Seoul", "Asia"),
    ("Egypt", "Cairo", "Africa"),
    ("Kenya", "Nairobi", "Africa"),
    ("Nigeria", "Abuja", "Africa"),
    ("Morocco", "Rabat", "Africa"),
    ("Ghana", "Accra", "Africa"),
    ("Canada", "Ottawa", "North America"),
    ("Mexico", "Mexico City", "North America"),
    ("Cuba", "Havana", "North America"),
    ("Brazil", "Brasilia", "South America"),
    ("Argentina", "Buenos Aires", "South America"),
    ("Peru", "Lima", "South America"),
    ("Chile", "Santiago", "South America"),
    ("Australia", "Canberra", "Oceania"),
    ("New Zealand", "Wellington", "Oceania"),
]

UNITS: list[tuple[str, str, float]] = [
    ("kilometres", "metres", 1000),
    ("metres", "centimetres", 100),
    ("hours", "minutes", 60),
    ("minutes", "seconds", 60),
    ("kilograms", "grams", 1000),
    ("litres", "millilitres", 1000),
]

Message = dict[str, str]


class ChatRow(TypedDict):
    """One trl-lib/Capybara-shaped example."""

    source: str
    messages: list[Message]


def _turn(role: str, content: str) -> Message:
    return {"role": role, "content": content}


def _arithmetic(rng: random.Random) -> list[Message]:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    op, word, result = rng.choice([("+", "plus", a + b), ("-", "minus", a - b), ("*", "times", a * b)])
    question = rng.choice([f"What is {a} {op} {b}?", f"Compute {a} {word} {b}.", f"How much is {a} {word} {b}?"])
    messages = [_turn("user", question), _turn("assistant", f"{a} {op} {b} = {result}.")]
    if rng.random() < 0.3:
        messages += [_turn("user", "And if you double that?"), _turn("assistant", f"Doubled, it is {2 * result}.")]
    return messages


def _capital(rng: random.Random) -> list[Message]:
    country, capital, continent = rng.choice(COUNTRIES)
    question = rng.choice(
        [
            f"What is the capital of {country}?",
            f"Which city is the capital of {country}?",
            f"Name the capital of {country}.",
        ]
    )
    messages = [_turn("user", question), _turn("assistant", f"The capital of {country} is {capital}.")]
    if rng.random() < 0.4:
        messages += [
            _turn("user", f"Which continent is {country} in?"),
            _turn("assistant", f"{country} is in {continent}."),
        ]
    return messages


def _units(rng: random.Random) -> list[Message]:
    big, small, factor = rng.choice(UNITS)
    amount = rng.randint(1, 20)
    return [
        _turn("user", f"How many {small} are there in {amount} {big}?"),
        _turn("assistant", f"There are {amount * factor:g} {small} in {amount} {big}."),
    ]


GENERATORS = {
    "keephub-arithmetic": _arithmetic,
    "keephub-capitals": _capital,
    "keephub-units": _units,
}


def _chat_rows(n: int, seed: int) -> Iterator[ChatRow]:
    rng = random.Random(seed)
    sources = sorted(GENERATORS)
    for _ in range(n):
        source = rng.choice(sources)
        yield {"source": source, "messages": GENERATORS[source](rng)}


def build_chat_dataset(n: int = 200, seed: int = 0) -> Dataset:
    """Chats shaped like trl-lib/Capybara (`source`, `messages`), generated locally from `seed`."""
    return Dataset.from_list(list(_chat_rows(n, seed)))


def write_chat_dataset_jsonl(path: Path, n: int = 200, seed: int = 0) -> Path:
    """Write the chats as JSON lines, which a job script reads with `load_dataset("json", ...)`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in _chat_rows(n, seed):
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def _train_tokenizer(texts: list[str]) -> Tokenizer:
    tokenizer = Tokenizer(BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def _chat_template() -> str:
    return resources.files("trl").joinpath("chat_templates", "qwen2_5.jinja").read_text(encoding="utf-8")


def build_tiny_base(out_dir: Path) -> Path:
    """Save a randomly initialised ~100k-parameter Qwen2 chat model and its tokenizer into `out_dir`.

    The folder loads like any Hub model (`from_pretrained(out_dir)`), so it can stand in
    for a real base model wherever a training job names one.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = [DEFAULT_SYSTEM_PROMPT, "system user assistant"]
    texts += [m["content"] for row in _chat_rows(1000, SEED) for m in row["messages"]]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(texts),
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens=["<|im_start|>"],
        model_max_length=MAX_LENGTH,
    )
    tokenizer.chat_template = _chat_template()

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_LENGTH,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
