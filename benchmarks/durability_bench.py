"""Durability performance figures, each measured against a baseline taken in the same run on the same machine.

1. Training slowdown from the sidecar, measured inside single training runs (TRL SFT, tiny Qwen2 model, CPU,
   a checkpoint every --save-steps). Each run's steps are cut into --chunks chunks of --chunk steps whose
   checkpoints go alternately to the output directory the sidecar watches (`keephub.output-dir`: each is
   pushed and verified while training goes on) and to one it does not (saved the same way, not pushed).
   A chunk's window runs from its first save to its last (timed by a Trainer callback), so a pushed window
   has a push in flight from its start as in steady state; after a pushed chunk the script waits, outside
   any window, until its last checkpoint is on the hub, so no push spills into the next unpushed window.
   Adjacent windows form a pair (the first pair of each run, with its warm-up, is not counted); runs
   alternate which kind comes first, so each step range is pushed in half of them. The figure is the median
   of the pairs' ratios, with a bootstrap interval. Target: <= 1.03. Beside it, a diagnostic: --job-pairs
   pairs of whole jobs, one without durability labels (no sidecar at all) and one with, back to back.
2. End of training -> "saved": a job on a bigger model (--hidden/--layers, built from a Qwen2Config)
   whose script does not push (the sidecar does). The figure is the time from the training process's exit
   (the sidecar records it in the verdict) to the "saved" verdict. Training has ended only when that
   process has: until then the script may still save, push or fail, and only its exit status decides
   between main and a rescue branch. Baseline: `HfApi.upload_folder` of the same final files (downloaded
   back from the job's repo) from this process to a fresh repo on a fresh keephub server that holds none
   of their bytes (after one small warm-up commit), i.e. the raw upload; median of --repeats each.
   Target: <= 1.2x. Also printed: the script's own timestamp right after `save_model()` to the verdict,
   which adds the training process's interpreter teardown (the sidecar uploads the final files during it),
   and when the last checkpoint's push and the final commit were recorded.

The server runs with KEEPHUB_JOB_CPUS=1, so every job (cpu-basic: 1 core) is pinned to the same core,
with the sidecar beside it; the server and this process share the machine's other core(s).

Run:  .venv/bin/python benchmarks/durability_bench.py [--jobs 6] [--chunks 32] [--repeats 7]   (about 16 min)
The data dir and server log live in a temporary directory under --tmp (default /tmp), removed at the
end unless --keep. Exit status 1 if a figure fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import textwrap
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from report import Figure, add_work_dir_options, at_least, print_table, work_dir

from keephub.devserver import LocalServer
from keephub.durability.sidecar import FINAL_LABEL

os.environ.update({
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_EXPERIMENTAL_WARNING": "1",
    "TOKENIZERS_PARALLELISM": "false",
})
# The baseline upload goes through hf_xet, as the job's own pushes do (the client's default).
for name in ("HF_TOKEN", "HF_HUB_DISABLE_XET"):
    os.environ.pop(name, None)

JOB_CPUS = 1
SLOWDOWN_TARGET = 1.03
SAVED_TARGET = 1.2
UV_IMAGE = "ghcr.io/astral-sh/uv:python3.12-bookworm"
MARK = "keephub-bench "

TRAIN = textwrap.dedent('''
    # /// script
    # dependencies = ["trl", "datasets"]
    # ///
    import json, os, time
    from datasets import load_dataset
    from trl import SFTConfig, SFTTrainer

    ns = os.environ["NS"]
    dataset = load_dataset(f"{ns}/chats", split="train")
    config = SFTConfig(
        output_dir="out",
        save_strategy="steps",
        save_steps=int(os.environ["SAVE_STEPS"]),
        save_total_limit=1,
        max_steps=int(os.environ["MAX_STEPS"]),
        per_device_train_batch_size=4,
        logging_steps=50,
        seed=7,
        disable_tqdm=True,
        bf16=False, use_cpu=True, activation_checkpointing=False, report_to=[],
    )
    trainer = SFTTrainer(model=f"{ns}/{os.environ['BASE']}", train_dataset=dataset, args=config)
    started = time.time()
    trainer.train()
    trained = time.time()
    trainer.save_model()
    saved = time.time()
    print("MARK" + json.dumps({"started": started, "trained": trained, "saved": saved}), flush=True)
''').replace("MARK", MARK)


# Figure 1's job: one training run whose checkpoints go, chunk by chunk, alternately to the directory the
# sidecar watches (pushed) and to one it does not (not pushed). Each chunk's window runs from its first
# save to its last, so a pushed window has a push in flight from its start, as in steady state; after a
# pushed chunk the script waits (outside any window) until its last checkpoint is on the hub, so no push
# spills into the next unpushed window.
ALTERNATING = textwrap.dedent('''
    # /// script
    # dependencies = ["trl", "datasets"]
    # ///
    import json, os, time
    from datasets import load_dataset
    from huggingface_hub import HfApi
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    ns, repo = os.environ["NS"], os.environ["REPO"]
    chunk, save_steps = int(os.environ["CHUNK"]), int(os.environ["SAVE_STEPS"])
    first_pushed = os.environ["FIRST"] == "pushed"

    def pushed(step):
        return ((step - 1) // chunk % 2 == 0) == first_pushed

    def directory(step):
        return "out" if pushed(step) else "scratch"

    class Alternate(TrainerCallback):
        def __init__(self):
            self.started = 0.0
            self.windows = []

        def on_save(self, args, state, control, **kwargs):
            now, step = time.perf_counter(), state.global_step
            if step % chunk == save_steps:
                self.started = now
            elif step % chunk == 0:
                self.windows.append({"pushed": pushed(step), "seconds": now - self.started, "end": step})
                if pushed(step):
                    deadline = time.time() + 120
                    while not HfApi().file_exists(repo, f"checkpoint-{step}/trainer_state.json"):
                        if time.time() > deadline:
                            raise RuntimeError(f"checkpoint-{step} did not reach {repo} within 120 s")
                        time.sleep(0.02)
                    time.sleep(0.1)  # the sidecar's verification of that commit
                args.output_dir = directory(step + 1)

    dataset = load_dataset(f"{ns}/chats", split="train")
    config = SFTConfig(
        output_dir=directory(1),
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=1,
        max_steps=int(os.environ["MAX_STEPS"]),
        per_device_train_batch_size=4,
        train_sampling_strategy="sequential",  # chunks of whole epochs see the same batches: the same work
        logging_steps=50,
        seed=7,
        disable_tqdm=True,
        bf16=False, use_cpu=True, activation_checkpointing=False, report_to=[],
    )
    alternate = Alternate()
    trainer = SFTTrainer(model=f"{ns}/{os.environ['BASE']}", train_dataset=dataset, args=config,
                         callbacks=[alternate])
    trainer.train()
    trainer.args.output_dir = "out"
    trainer.save_model()
    print("MARK" + json.dumps({"windows": alternate.windows}), flush=True)
''').replace("MARK", MARK)


@dataclass
class JobRun:
    """What one training job reported: its own timestamps, and the sidecar's pushes (None when unguarded)."""

    job_id: str
    marks: dict[str, float]
    durability: dict | None

    @property
    def train_seconds(self) -> float:
        return self.marks["trained"] - self.marks["started"]


class Bench:
    def __init__(self, server: LocalServer, token: str, namespace: str, work: Path) -> None:
        from huggingface_hub import HfApi

        self.server = server
        self.token = token
        self.ns = namespace
        self.work = work
        self.api = HfApi(endpoint=server.url, token=token)

    def setup(self, hidden: int, layers: int) -> None:
        """Push the tiny base model, a bigger one, the chat data set and the training script."""
        from keephub.demo.tiny import build_tiny_base, write_chat_dataset_jsonl

        tiny = build_tiny_base(self.work / "tiny-base")
        big = build_bigger_base(tiny, self.work / "big-base", hidden, layers)
        for name, folder in (("tiny-base", tiny), ("big-base", big)):
            self.api.create_repo(f"{self.ns}/{name}")
            self.api.upload_folder(folder_path=folder, repo_id=f"{self.ns}/{name}")
        self.api.create_repo(f"{self.ns}/chats", repo_type="dataset")
        data = write_chat_dataset_jsonl(self.work / "chats" / "train.jsonl", n=200)
        self.api.upload_folder(folder_path=data.parent, repo_id=f"{self.ns}/chats", repo_type="dataset")
        self.api.create_repo(f"{self.ns}/scripts")
        for name, text in (("train.py", TRAIN), ("alternating.py", ALTERNATING)):
            self.api.upload_file(path_or_fileobj=text.encode(), path_in_repo=name, repo_id=f"{self.ns}/scripts")

    def script_url(self, name: str) -> str:
        return f"{self.server.url}/{self.ns}/scripts/resolve/main/{name}"

    def train(self, base: str, steps: int, save_steps: int, repo: str | None, script: str = "train.py",
              env: dict[str, str] | None = None) -> JobRun:
        """One training job, with the sidecar pushing to `repo` when given; waits for it to end."""
        # Unguarded, preflight would refuse the job (nothing pushes its results): the override runs it anyway.
        labels = {"keephub.repo": repo, "keephub.output-dir": "out"} if repo else {"keephub.preflight": "override"}
        if repo:
            self.api.create_repo(repo)
        job = self.api.run_job(
            image=UV_IMAGE, command=["uv", "run", self.script_url(script)], namespace=self.ns, labels=labels,
            env={"NS": self.ns, "BASE": base, "MAX_STEPS": str(steps), "SAVE_STEPS": str(save_steps),
                 "REPO": repo or "", **(env or {})},
            secrets={"HF_TOKEN": "$HF_TOKEN"},
        )
        info = self.api.wait_for_job(job_id=job.id, namespace=self.ns, timeout=1800, poll_interval=0.5)
        lines = self.log_lines(job.id)
        if info.status.stage != "COMPLETED":
            raise RuntimeError(f"job {job.id} ended {info.status.stage}: {info.status.message}\n" + "\n".join(lines[-40:]))
        marks = next((json.loads(line[len(MARK):]) for line in lines if line.startswith(MARK)), None)
        if marks is None:
            raise RuntimeError(f"job {job.id} printed no timestamps:\n" + "\n".join(lines[-40:]))
        return JobRun(job.id, marks, self.record(job.id).get("durability"))

    def log_lines(self, job_id: str) -> list[str]:
        return [data for _, data in self.log_events(job_id)]

    def log_events(self, job_id: str) -> list[tuple[float, str]]:
        """A finished job's log lines with the server's timestamps, read from the raw stream
        (fetch_job_logs(follow=False) can drop the last lines, see jobs_bench.py)."""
        import httpx

        reply = httpx.get(f"{self.server.url}/api/jobs/{self.ns}/{job_id}/logs", timeout=60,
                          headers={"Authorization": f"Bearer {self.token}"})
        reply.raise_for_status()
        events = [json.loads(line[len("data: "):]) for line in reply.text.splitlines() if line.startswith("data: {")]
        return [(datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp(), e["data"]) for e in events]

    def final_push_seconds(self, job_id: str) -> float:
        """How long the sidecar's final push itself took: its "Pushing model to" line to its ✅ line."""
        events = self.log_events(job_id)
        start = next(t for t, line in events if line.startswith("[keephub] Pushing model to"))
        end = next(t for t, line in events if line.startswith("[keephub] ✅ Model pushed successfully"))
        return end - start

    def record(self, job_id: str) -> dict:
        import httpx

        reply = httpx.get(f"{self.server.url}/api/jobs/{self.ns}/{job_id}", timeout=60,
                          headers={"Authorization": f"Bearer {self.token}"})
        reply.raise_for_status()
        return reply.json()

    def fresh_repo(self, stem: str) -> str:
        return f"{self.ns}/{stem}-{uuid.uuid4().hex[:6]}"

    def raw_upload(self, folder: Path) -> float:
        """Seconds for `upload_folder` of `folder` to a fresh server, which must receive every byte: the
        baseline for figure 2. One small commit first opens the connection and hf_xet's session, as the
        sidecar's checkpoint pushes have for its final one."""
        from huggingface_hub import HfApi

        server = LocalServer(data_dir=self.work / f"raw-{uuid.uuid4().hex[:6]}" / "data")
        server.start()
        try:
            _, token = server.user("raw")
            api = HfApi(endpoint=server.url, token=token)
            api.create_repo("raw/final")
            api.upload_file(path_or_fileobj=os.urandom(1 << 20), path_in_repo="warm-up.bin", repo_id="raw/final")
            start = time.perf_counter()
            api.upload_folder(folder_path=folder, repo_id="raw/final")
            return time.perf_counter() - start
        finally:
            server.stop()


def build_bigger_base(tiny: Path, out_dir: Path, hidden: int, layers: int) -> Path:
    """The tiny base's tokenizer with a wider, deeper randomly initialised Qwen2, so uploads take measurable time."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, Qwen2Config

    shutil.copytree(tiny, out_dir)
    (out_dir / "model.safetensors").unlink()
    small = AutoConfig.from_pretrained(tiny)
    config = Qwen2Config(
        vocab_size=small.vocab_size, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=small.max_position_embeddings,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=small.eos_token_id,
        pad_token_id=small.pad_token_id,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out_dir)
    return out_dir


def figure_slowdown(args: argparse.Namespace, bench: Bench) -> list[Figure]:
    """Figure 1: adjacent windows of the same training run, pushed and not pushed (see ALTERNATING)."""
    steps = args.chunk * args.chunks
    ratios: list[float] = []
    totals = {True: 0.0, False: 0.0}
    for index in range(args.jobs):
        first = "pushed" if index % 2 == 0 else "plain"
        run = bench.train("tiny-base", steps, args.save_steps, bench.fresh_repo("slowdown"), "alternating.py",
                          {"CHUNK": str(args.chunk), "FIRST": first})
        windows = run.marks["windows"]
        assert len(windows) == args.chunks, windows
        pushes = run.durability["pushes"] if run.durability else []
        expected = [f"checkpoint-{w['end'] - args.chunk + s}" for w in windows if w["pushed"]
                    for s in range(args.save_steps, args.chunk + 1, args.save_steps)]
        assert [p["label"] for p in pushes] == [*expected, FINAL_LABEL], pushes
        pairs = [(x, y) if x["pushed"] else (y, x) for x, y in zip(windows[::2], windows[1::2])]
        for pushed, plain in pairs[1:]:  # the run's first pair includes its warm-up and is not counted
            ratios.append(pushed["seconds"] / plain["seconds"])
            totals[True] += pushed["seconds"]
            totals[False] += plain["seconds"]
        print(f"  job {index} ({first} first): pairs pushed/not, s: "
              + ", ".join(f"{p['seconds']:.2f}/{a['seconds']:.2f}" for p, a in pairs)
              + f"; {len(expected)} checkpoints pushed", flush=True)
    median = statistics.median(ratios)
    low, high = bootstrap_interval(ratios)
    print(f"{len(ratios)} pairs of adjacent {args.chunk - args.save_steps}-step windows; ratios pushed/not: median "
          f"{median:.3f} (95% bootstrap interval {low:.3f}-{high:.3f}; single pairs range "
          f"{min(ratios):.2f}-{max(ratios):.2f}: the machine's noise over a few seconds)")
    return [
        Figure(f"train time, ckpt push every {args.save_steps} (median of pairs)", totals[True] / len(ratios),
               totals[False] / len(ratios), "s", median, f"<= {SLOWDOWN_TARGET:g}x", median <= SLOWDOWN_TARGET),
        Figure("  ratio of the totals", totals[True], totals[False], "s", totals[True] / totals[False], "(diag.)", None),
    ]


def bootstrap_interval(ratios: list[float], rounds: int = 4000) -> tuple[float, float]:
    """95% interval of the median of `ratios`, resampling the pairs (a fixed seed: the same data, the same answer)."""
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(rounds))
    return medians[int(0.025 * rounds)], medians[int(0.975 * rounds) - 1]


def figure_slowdown_jobs(args: argparse.Namespace, bench: Bench) -> list[Figure]:
    """Diagnostic beside figure 1: whole jobs, one without durability labels (no sidecar at all) and one with,
    back to back. Jobs start about 15 s apart, so the machine's load differs more between the two than
    between figure 1's adjacent windows."""
    plain: list[float] = []
    guarded: list[float] = []
    for index in range(args.job_pairs + 1):  # the first pair warms caches and is not counted
        a = bench.train("tiny-base", args.steps, args.save_steps, None)
        b = bench.train("tiny-base", args.steps, args.save_steps, bench.fresh_repo("slowdown"))
        assert a.durability is None, "the unlabelled job must not be guarded"
        pushes = b.durability["pushes"] if b.durability else []
        expected = [f"checkpoint-{s}" for s in range(args.save_steps, args.steps + 1, args.save_steps)]
        assert [p["label"] for p in pushes] == [*expected, FINAL_LABEL], pushes
        print(f"  pair {index}{' (warm-up)' if index == 0 else ''}: train a {a.train_seconds:.2f} s, "
              f"b {b.train_seconds:.2f} s; b: {len(pushes)} pushes, {sum(p['bytes'] for p in pushes):,} bytes",
              flush=True)
        if index:
            plain.append(a.train_seconds)
            guarded.append(b.train_seconds)
    paired = statistics.median(b / a for a, b in zip(plain, guarded))
    return [Figure("  whole jobs, unlabelled vs labelled (median b/a)", statistics.median(guarded),
                   statistics.median(plain), "s", paired, "(diag.)", None)]


def figures_saved(args: argparse.Namespace, bench: Bench) -> list[Figure]:
    from huggingface_hub import snapshot_download

    measured: list[float] = []
    from_save: list[float] = []
    baseline: list[float] = []
    for index in range(args.repeats):
        run = bench.train("big-base", args.big_steps, args.big_save_steps, bench.fresh_repo("saved"))
        assert run.durability and run.durability["verdict"]["status"] == "saved", run.durability
        verdict = run.durability["verdict"]
        final = next(p for p in run.durability["pushes"] if p["label"] == FINAL_LABEL)
        files = Path(snapshot_download(run.durability["targetRepo"], allow_patterns=final["files"],
                                       cache_dir=bench.work / f"download-{index}", token=bench.token))
        folder = bench.work / f"final-{index}"
        folder.mkdir()
        for name in final["files"]:
            shutil.copyfile(files / name, folder / name)
        raw = bench.raw_upload(folder)
        checkpoint = max(p["time"] for p in run.durability["pushes"] if p["label"] != FINAL_LABEL)
        pushing = bench.final_push_seconds(run.job_id)
        ended, saved = verdict["trainingEnded"], verdict["time"]
        measured.append(saved - ended)
        from_save.append(saved - run.marks["saved"])
        baseline.append(raw)
        print(f"  run {index}: train {run.train_seconds:.2f} s, save_model {run.marks['saved'] - run.marks['trained']:.2f} s, "
              f"then the process exited {ended - run.marks['saved']:.2f} s later; exit -> saved verdict "
              f"{measured[-1]:.3f} s (from save_model {from_save[-1]:.2f} s; last checkpoint's push recorded at "
              f"{checkpoint - ended:+.2f} s, the final commit at {final['time'] - ended:+.2f} s and took "
              f"{pushing:.2f} s); final files {final['bytes']:,} bytes in {len(final['files'])} files; raw "
              f"upload_folder {raw:.2f} s", flush=True)
    m, f, b = statistics.median(measured), statistics.median(from_save), statistics.median(baseline)
    return [
        Figure("training exit -> saved verdict", m, b, "s", m / b, f"<= {SAVED_TARGET:g}x", m / b <= SAVED_TARGET),
        Figure("  from save_model() (+ teardown)", f, b, "s", f / b, "(diag.)", None),
    ]


def run(args: argparse.Namespace, work: Path) -> list[Figure]:
    server = LocalServer(data_dir=work / "data", env={"KEEPHUB_JOB_CPUS": str(JOB_CPUS)})
    os.environ["HF_ENDPOINT"] = server.url
    server.start()
    try:
        _, token = server.user("alice")
        bench = Bench(server, token, "alice", work)
        bench.setup(args.hidden, args.layers)
        figures = []
        if not args.skip_slowdown:
            print(f"figure 1: tiny model, checkpoint every {args.save_steps} steps, {args.jobs} jobs of {args.chunks} "
                  f"alternating {args.chunk}-step chunks", flush=True)
            figures += figure_slowdown(args, bench)
            if args.job_pairs:
                print(f"figure 1, whole jobs: {args.steps} steps, unlabelled vs labelled", flush=True)
                figures += figure_slowdown_jobs(args, bench)
        print(f"figure 2: hidden {args.hidden}, {args.layers} layers, {args.big_steps} steps", flush=True)
        figures += figures_saved(args, bench)
    finally:
        server.stop()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=at_least(1), default=6,
                        help="figure 1's jobs, each a run of alternating chunks (default 6)")
    parser.add_argument("--chunks", type=at_least(1), default=32, help="chunks per job, half pushed (even; default 32)")
    parser.add_argument("--chunk", type=at_least(1), default=50,
                        help="training steps per chunk (default 50: one epoch of the 200-row data set at batch size 4)")
    parser.add_argument("--save-steps", type=at_least(1), default=10, help="checkpoint interval for figure 1 (default 10)")
    parser.add_argument("--job-pairs", type=at_least(0), default=3,
                        help="timed pairs of whole jobs, unlabelled and labelled, after a warm-up pair (default 3; 0 skips)")
    parser.add_argument("--steps", type=at_least(1), default=200, help="training steps of those jobs (default 200)")
    parser.add_argument("--repeats", type=at_least(1), default=7, help="figure 2's timed runs (default 7)")
    parser.add_argument("--hidden", type=at_least(1), default=256, help="hidden size of figure 2's model (default 256)")
    parser.add_argument("--layers", type=at_least(1), default=4, help="layers of figure 2's model (default 4)")
    parser.add_argument("--big-steps", type=at_least(1), default=20, help="training steps for figure 2 (default 20)")
    parser.add_argument("--big-save-steps", type=at_least(1), default=10, help="checkpoint interval for figure 2 (default 10)")
    parser.add_argument("--skip-slowdown", action="store_true", help="measure figure 2 only")
    add_work_dir_options(parser)
    args = parser.parse_args()
    if args.chunks % 2 or args.chunks < 4 or args.chunk % args.save_steps or args.chunk < 2 * args.save_steps:
        parser.error("--chunks must be even and at least 4, and --chunk a multiple of --save-steps, at least twice it")
    with work_dir(parser, args, "keephub-durability-bench-") as work:
        os.environ["HF_HOME"] = str(work / "hf-home")
        figures = run(args, work)
    print_table(figures, {
        "train-time baseline": "the same training run's adjacent window whose checkpoints (saved alike) are not "
                               "pushed; figure = median of the pairs' ratios; whole-jobs row: trainer.train() in a "
                               "job without durability labels vs one with, first pair not counted",
        "saved baseline": "median HfApi.upload_folder of the same final files from the benchmark process to a "
                          "fresh keephub server (none of their bytes there); measured = the training process's "
                          "exit -> the sidecar's 'saved' verdict (both recorded in the verdict)",
        "save_model() row": "diagnostic, not a target: from the script's timestamp after save_model(), so the "
                            "training process's interpreter teardown (during which the final files go up) is in it",
    })
    return 0 if all(f.passed is not False for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
