"""CLI: alignment. `crawlgpt reward-train`, `reward-eval`, `reward-score`, `dpo`, `ppo`, `align-compare`.

Each training command runs one `train.objective.Objective` on the one training loop and writes
DATA/runs/RUN-<kind>/ beside the fine-tuned model in DATA/runs/RUN-sft/ (metrics.jsonl, loss.png,
alignment.png, checkpoints/), then prints its before/after figures.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import click

from cli.training import _fail, _is_main_process, _run_name, data_option, device_option, tokenizer_option

PREFERENCE_FILE = "instruction-data-with-preference.json"


def _policy_option(f):
    return click.option("--policy", type=click.Path(path_type=Path), default=None,
                        help="The fine-tuned model to start from: a checkpoint or run folder [default: DATA/runs/RUN-sft].")(f)


def _pairs_option(f):
    return click.option("--pairs", type=click.Path(dir_okay=False, exists=True, path_type=Path), required=True,
                        help="Preference pairs: .json list or .jsonl (instruction/input/chosen/rejected, "
                             "prompt/chosen/rejected, or chat message lists).")(f)


def training_options(default_lr: float, default_steps: int | None):
    """Options every alignment training command shares (they map onto train.config fields)."""
    def decorate(f):
        steps = [] if default_steps is None else [
            click.option("--steps", type=int, default=default_steps, show_default=True, help="Optimizer steps.")]
        options = [
            click.option("--run", "--run-name", "run", default="default", show_default=True, callback=_run_name,
                         help="Run name: reads DATA/runs/RUN-sft, writes DATA/runs/RUN-<command>. Under torchrun spell it --run-name."),
            *steps,
            click.option("--lr", type=float, default=default_lr, show_default=True, help="Peak learning rate."),
            click.option("--min-lr", type=float, default=None, help="Final learning rate [default: --lr, constant]."),
            click.option("--warmup-steps", type=int, default=None, help="Linear warmup [default: 5% of steps]."),
            click.option("--weight-decay", type=float, default=0.0, show_default=True, help="AdamW weight decay."),
            click.option("--grad-clip", type=float, default=1.0, show_default=True, help="Gradient norm clip (0 = off)."),
            click.option("--micro-batch", type=int, default=4, show_default=True,
                         help="Sequences (pairs for reward/DPO) per forward pass."),
            click.option("--val-fraction", type=float, default=0.1, show_default=True,
                         help="Share of prompts held out for validation (hash of the prompt: stable)."),
            click.option("--eval-every", type=int, default=None, help="Evaluate every N steps [default: a fifth of the steps]."),
            click.option("--ckpt-every", type=int, default=None, help="Checkpoint every N steps [default: --eval-every]."),
            click.option("--keep-last", type=int, default=2, show_default=True, help="Checkpoints to keep."),
            click.option("--log-every", type=int, default=1, show_default=True, help="Metrics record every N steps."),
            click.option("--seed", type=int, default=1337, show_default=True, help="Seed of order, sampling and init."),
            click.option("--resume", is_flag=True, help="Continue the run from its newest checkpoint."),
            click.option("--precision", type=click.Choice(["auto", "bf16", "fp32"]), default="auto", show_default=True,
                         help="bf16 autocast on CUDA, fp32 elsewhere."),
            click.option("--tensorboard/--no-tensorboard", default=False, show_default=True,
                         help="Also write TensorBoard events."),
            device_option, tokenizer_option, data_option,
        ]
        for option in reversed(options):
            f = option(f)
        return f
    return decorate


def _train_config(run_dir: Path, o: dict, seq_len: int | None = None, sample_every: int | None = None):
    from train import CheckpointConfig, DataConfig, EvalConfig, LogConfig, OptimConfig, TrainConfig

    eval_every = o["eval_every"] if o["eval_every"] is not None else max(1, o["steps"] // 5)
    return TrainConfig(
        run_dir=str(run_dir), max_steps=o["steps"], preset="tiny", device=o["device"], precision=o["precision"],
        resume=o["resume"], seed=o["seed"],
        data=DataConfig(shards_dir="unused", seq_len=seq_len, micro_batch_size=o["micro_batch"], seed=o["seed"],
                        prefetch_batches=0),
        optim=OptimConfig(lr=o["lr"], min_lr=o["min_lr"] if o["min_lr"] is not None else o["lr"],
                          warmup_steps=o["warmup_steps"], weight_decay=o["weight_decay"], grad_clip=o["grad_clip"]),
        eval=EvalConfig(every_steps=eval_every, sample_every_steps=eval_every if sample_every is None else sample_every),
        checkpoint=CheckpointConfig(every_steps=eval_every if o["ckpt_every"] is None else o["ckpt_every"],
                                    keep_last=o["keep_last"]),
        log=LogConfig(every_steps=o["log_every"], tensorboard=o["tensorboard"]),
    )


def _paths(data: Path, run: str, policy: Path | None, tokenizer: Path | None) -> tuple[Path, Path]:
    return (policy or data / "runs" / f"{run}-sft"), (tokenizer or data / "tokenizer" / "tokenizer.json")


def _run_training(config, objective, title: str, keys: list[tuple[str, str]]) -> None:
    """Train, plot, and print the before/after table of the validation figures in keys."""
    from train import TrainError, train
    from train.align.plots import plot_alignment
    from train.metrics import read_metrics

    try:
        result = train(config, objective=objective)
    except TrainError as err:
        _fail(err)
    if not _is_main_process():
        return
    run_dir = Path(config.run_dir)
    png = plot_alignment(run_dir / "metrics.jsonl", run_dir / "alignment.png", objective.kind)
    vals = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("kind") == "val"]
    before, after = (vals[0], vals[-1]) if vals else ({}, {})
    click.echo(f"\n{title}: {run_dir}")
    click.echo(f"{'':>24}  {'before':>10}  {'after':>10}")
    for key, label in keys:
        b, a = before.get(key), after.get(key)
        fmt = (lambda v: "n/a" if v is None else f"{v:.4f}")
        click.echo(f"{label:>24}  {fmt(b):>10}  {fmt(a):>10}")
    click.echo(f"{'steps':>24}  {result.final_step:,} of {config.max_steps:,}")
    click.echo(f"{'checkpoint':>24}  {result.checkpoint}")
    if png is not None:
        click.echo(f"{'plot':>24}  {png}")
    if result.interrupted:
        click.echo("stopped by a signal; continue with the same command plus --resume", err=True)
        raise SystemExit(128 + int(result.stop_signal or signal.SIGTERM))


# --------------------------------------------------------------------------------------------------


@click.command("dpo")
@_policy_option
@_pairs_option
@click.option("--beta", type=float, default=0.1, show_default=True, help="DPO temperature β.")
@click.option("--average-logprobs", is_flag=True,
              help="Mean log-probability per response token instead of the sum (the book's variant).")
@click.option("--reference", type=click.Choice(["precompute", "online"]), default="precompute", show_default=True,
              help="Reference log-probabilities computed once before training, or at every step.")
@click.option("--batch-pairs", type=int, default=8, show_default=True, help="Pairs per optimizer step.")
@click.option("--max-len", type=int, default=0, show_default=True,
              help="Tokens of prompt + response; 0 = the model's context.")
@training_options(default_lr=5e-6, default_steps=100)
def dpo_cmd(policy, pairs, beta, average_logprobs, reference, batch_pairs, max_len, **o) -> None:
    """Direct Preference Optimization of the fine-tuned model; writes DATA/runs/RUN-dpo/."""
    from train import TrainError
    from train.align.dpo import DPOObjective

    policy_path, tokenizer = _paths(o["data"], o["run"], policy, o["tokenizer_path"])
    try:
        objective = DPOObjective(policy_path, pairs, tokenizer, val_fraction=o["val_fraction"],
                                 batch_pairs=batch_pairs, beta=beta, average_logprobs=average_logprobs,
                                 reference=reference)
        config = _train_config(o["data"] / "runs" / f"{o['run']}-dpo", o, seq_len=max_len or None)
    except TrainError as err:
        _fail(err)
    _run_training(config, objective, "DPO", [("val_loss", "validation loss"),
                                             ("val_reward_accuracy", "implicit reward accuracy"),
                                             ("val_reward_margin", "implicit reward margin")])


@click.command("reward-train")
@_policy_option
@_pairs_option
@click.option("--center-coef", type=float, default=0.0, show_default=True,
              help="Weight of the centring term c·(r_chosen + r_rejected)² that keeps rewards near 0 (e.g. 0.01).")
@click.option("--batch-pairs", type=int, default=8, show_default=True, help="Pairs per optimizer step.")
@click.option("--max-len", type=int, default=0, show_default=True,
              help="Tokens of prompt + response; 0 = the model's context.")
@training_options(default_lr=1e-5, default_steps=100)
def reward_train_cmd(policy, pairs, center_coef, batch_pairs, max_len, **o) -> None:
    """Train a reward model (the fine-tuned model + a scalar head) on preference pairs; writes DATA/runs/RUN-reward/."""
    from train import TrainError
    from train.align.reward import RewardObjective

    policy_path, tokenizer = _paths(o["data"], o["run"], policy, o["tokenizer_path"])
    try:
        objective = RewardObjective(policy_path, pairs, tokenizer, val_fraction=o["val_fraction"],
                                    batch_pairs=batch_pairs, center_coef=center_coef)
        config = _train_config(o["data"] / "runs" / f"{o['run']}-reward", o, seq_len=max_len or None, sample_every=0)
    except TrainError as err:
        _fail(err)
    _run_training(config, objective, "reward model", [("val_loss", "validation loss"),
                                                      ("val_accuracy", "pair accuracy"),
                                                      ("val_margin", "mean margin")])


def _reward_checkpoint(data: Path, run: str, checkpoint: Path | None) -> Path:
    return checkpoint or data / "runs" / f"{run}-reward"


@click.command("reward-eval")
@data_option
@click.option("--run", "--run-name", "run", default="default", show_default=True, callback=_run_name,
              help="Run name [checkpoint default: DATA/runs/RUN-reward].")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None, help="Reward model checkpoint or run folder.")
@_pairs_option
@click.option("--split", type=click.Choice(["all", "train", "val"]), default="all", show_default=True,
              help="Score every pair, or one side of the hash split (same --val-fraction as training).")
@click.option("--val-fraction", type=float, default=0.1, show_default=True, help="The split's validation share.")
@click.option("--batch", type=int, default=8, show_default=True, help="Pairs per forward pass.")
@tokenizer_option
@device_option
def reward_eval_cmd(data, run, checkpoint, pairs, split, val_fraction, batch, tokenizer_path, device) -> None:
    """Pairwise accuracy and mean margin of a reward model on a preference file."""
    from train import TrainError
    from train.distributed import resolve_device
    from train.align.reward import evaluate_reward_pairs

    try:
        ev = evaluate_reward_pairs(_reward_checkpoint(data, run, checkpoint), pairs,
                                   tokenizer_path or data / "tokenizer" / "tokenizer.json", resolve_device(device),
                                   batch_size=batch, split=split, val_fraction=val_fraction)
    except TrainError as err:
        _fail(err)
    click.echo(f"{'pairs':>16}  {ev.pairs:,} ({split})")
    click.echo(f"{'read':>16}  {ev.stats.summary()}")
    click.echo(f"{'accuracy':>16}  {ev.accuracy:.4f}")
    click.echo(f"{'mean margin':>16}  {ev.margin:.4f}")


@click.command("reward-score")
@data_option
@click.option("--run", "--run-name", "run", default="default", show_default=True, callback=_run_name,
              help="Run name [checkpoint default: DATA/runs/RUN-reward].")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None, help="Reward model checkpoint or run folder.")
@click.option("--input", "input_path", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="JSONL of {instruction or prompt, response}; prints each line with its reward.")
@click.option("--prompt", default=None, help="One instruction to score (with --response).")
@click.option("--response", default=None, help="The response to --prompt.")
@tokenizer_option
@device_option
def reward_score_cmd(data, run, checkpoint, input_path, prompt, response, tokenizer_path, device) -> None:
    """Score prompt/response lines with a reward model (the prompt is rendered with its template)."""
    from train import TrainError
    from train.distributed import resolve_device
    from train.align.preference import PreferenceDataError, iter_records
    from train.align.reward import score_texts

    try:
        if input_path is not None:
            records = []
            for where, rec in iter_records(input_path):
                text = rec.get("instruction", rec.get("prompt")) if isinstance(rec, dict) else None
                if not isinstance(text, str) or not isinstance(rec.get("response"), str):
                    raise PreferenceDataError(f"{where}: needs `instruction` (or `prompt`) and `response` strings")
                records.append((text, rec.get("input") or "", rec["response"], rec))
        elif prompt is not None and response is not None:
            records = [(prompt, "", response, {"prompt": prompt, "response": response})]
        else:
            raise click.UsageError("give --input FILE, or --prompt and --response")
        scores = score_texts(_reward_checkpoint(data, run, checkpoint), [r[:3] for r in records],
                             tokenizer_path or data / "tokenizer" / "tokenizer.json", resolve_device(device))
    except TrainError as err:
        _fail(err)
    for (*_, rec), score in zip(records, scores):
        click.echo(json.dumps({**rec, "reward": round(score, 6)}, ensure_ascii=False))


@click.command("ppo")
@_policy_option
@click.option("--reward-model", type=click.Path(path_type=Path), default=None,
              help="The frozen reward model: checkpoint or run folder [default: DATA/runs/RUN-reward].")
@click.option("--prompts", type=click.Path(dir_okay=False, exists=True, path_type=Path), required=True,
              help="Prompts: .json/.jsonl with `instruction`[+`input`], `prompt`, or chat messages (a preference "
                   "file works: its responses are ignored).")
@click.option("--iterations", type=int, default=20, show_default=True,
              help="Rollouts; steps = iterations x epochs x rollout-prompts / minibatch.")
@click.option("--rollout-prompts", type=int, default=16, show_default=True, help="Prompts sampled per iteration.")
@click.option("--minibatch", type=int, default=4, show_default=True, help="Sequences per optimizer step.")
@click.option("--epochs", type=int, default=4, show_default=True, help="Passes over each rollout.")
@click.option("--max-new-tokens", type=int, default=64, show_default=True, help="Longest response.")
@click.option("--temperature", type=float, default=0.7, show_default=True, help="Rollout sampling temperature.")
@click.option("--top-k", type=int, default=0, show_default=True, help="Sample among the k most likely tokens; 0 = all.")
@click.option("--kl-coef", type=float, default=0.05, show_default=True, help="Per-token KL penalty weight.")
@click.option("--clip", type=float, default=0.2, show_default=True, help="Policy ratio clip range.")
@click.option("--value-clip", type=float, default=0.2, show_default=True, help="Value change clip range.")
@click.option("--gamma", type=float, default=1.0, show_default=True, help="GAE discount.")
@click.option("--lam", type=float, default=0.95, show_default=True, help="GAE lambda.")
@click.option("--vf-coef", type=float, default=0.1, show_default=True, help="Value loss weight.")
@click.option("--no-eot-penalty", type=float, default=1.0, show_default=True,
              help="Subtracted from the score of a response that never produced end-of-text.")
@click.option("--value-init", type=click.Choice(["reward", "policy"]), default="reward", show_default=True,
              help="Value model starts from the reward model (InstructGPT) or from the policy.")
@click.option("--val-prompts", type=int, default=16, show_default=True, help="Held-out prompts per evaluation.")
@training_options(default_lr=1e-5, default_steps=None)
def ppo_cmd(policy, reward_model, prompts, iterations, rollout_prompts, minibatch, epochs, max_new_tokens,
            temperature, top_k, kl_coef, clip, value_clip, gamma, lam, vf_coef, no_eot_penalty, value_init,
            val_prompts, **o) -> None:
    """PPO against the reward model (RLHF): writes DATA/runs/RUN-ppo/."""
    from train import TrainError
    from train.align.ppo import PPOConfig, PPOObjective

    policy_path, tokenizer = _paths(o["data"], o["run"], policy, o["tokenizer_path"])
    try:
        cfg = PPOConfig(kl_coef=kl_coef, clip=clip, value_clip=value_clip, gamma=gamma, lam=lam, epochs=epochs,
                        rollout_prompts=rollout_prompts, minibatch=minibatch, max_new_tokens=max_new_tokens,
                        temperature=temperature, top_k=top_k or None, vf_coef=vf_coef,
                        no_eot_penalty=no_eot_penalty, value_init=value_init, val_prompts=val_prompts)
        objective = PPOObjective(policy_path, cfg, reward_checkpoint=reward_model or o["data"] / "runs" / f"{o['run']}-reward",
                                 prompts_path=prompts, tokenizer_path=tokenizer, val_fraction=o["val_fraction"])
        o = {**o, "steps": iterations * cfg.steps_per_iteration}
        if o["eval_every"] is None:
            o["eval_every"] = cfg.steps_per_iteration * max(1, iterations // 5)
        config = _train_config(o["data"] / "runs" / f"{o['run']}-ppo", o, sample_every=cfg.steps_per_iteration)
    except TrainError as err:
        _fail(err)
    _run_training(config, objective, "PPO", [("val_reward", "reward-model score"), ("val_kl", "KL to reference"),
                                             ("val_response_len", "response length"),
                                             ("val_no_eot_share", "no end-of-text share")])


@click.command("align-compare")
@data_option
@click.option("--run", "--run-name", "run", default="default", show_default=True, callback=_run_name,
              help="Run name (for the defaults below).")
@click.option("--policy", "policies", type=click.Path(path_type=Path), multiple=True,
              help="Policies to judge (repeatable) [default: DATA/runs/RUN-ppo and RUN-dpo, those that exist].")
@click.option("--baseline", type=click.Path(path_type=Path), default=None,
              help="The policy they are compared with [default: DATA/runs/RUN-sft].")
@click.option("--reward-model", type=click.Path(path_type=Path), default=None,
              help="The judge [default: DATA/runs/RUN-reward].")
@click.option("--prompts", type=click.Path(dir_okay=False, exists=True, path_type=Path), required=True,
              help="Prompt or preference file; its held-out side (hash split) is used.")
@click.option("--val-fraction", type=float, default=0.1, show_default=True, help="The split's validation share.")
@click.option("--num-prompts", type=int, default=64, show_default=True, help="Held-out prompts to answer.")
@click.option("--max-new-tokens", type=int, default=64, show_default=True, help="Longest response.")
@click.option("--temperature", type=float, default=0.7, show_default=True, help="Sampling temperature (0 = greedy).")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed.")
@click.option("--show", type=int, default=3, show_default=True, help="Sample answers printed side by side.")
@tokenizer_option
@device_option
def align_compare_cmd(data, run, policies, baseline, reward_model, prompts, val_fraction, num_prompts,
                      max_new_tokens, temperature, seed, show, tokenizer_path, device) -> None:
    """Win rate of aligned policies against the baseline on held-out prompts, judged by the reward model,
    and the KL each paid."""
    from train import TrainError
    from train.distributed import resolve_device
    from train.align.judge import compare_policies

    runs = data / "runs"
    if not policies:
        policies = tuple(p for p in (runs / f"{run}-ppo", runs / f"{run}-dpo") if (p / "checkpoints").is_dir())
        if not policies:
            raise click.UsageError(f"no {runs}/{run}-ppo or {run}-dpo run: pass --policy")
    try:
        report = compare_policies(list(policies), baseline or runs / f"{run}-sft", reward_model or runs / f"{run}-reward",
                                  prompts, tokenizer_path or data / "tokenizer" / "tokenizer.json",
                                  resolve_device(device), val_fraction=val_fraction, num_prompts=num_prompts,
                                  max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    except TrainError as err:
        _fail(err)
    click.echo(f"{report.prompts} held-out prompts; baseline {report.baseline} scores {report.baseline_score:.4f}")
    click.echo(f"{'policy':<50} {'win rate':>9} {'score':>9} {'KL':>9} {'length':>7}")
    for row in report.rows:
        click.echo(f"{row.name:<50} {row.win_rate:>9.3f} {row.score:>9.4f} {row.kl:>9.3f} {row.length:>7.1f}")
    for i, sample in enumerate(report.samples[:show]):
        click.echo(f"\n--- prompt {i + 1}: {sample['prompt']!r}")
        for name, (text, score) in sample["answers"].items():
            click.echo(f"  [{score:+.3f}] {name}: {text!r}")


def register(group: click.Group) -> None:
    group.add_command(reward_train_cmd)
    group.add_command(reward_eval_cmd)
    group.add_command(reward_score_cmd)
    group.add_command(dpo_cmd)
    group.add_command(ppo_cmd)
    group.add_command(align_compare_cmd)
