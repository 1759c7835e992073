"""DPO side by side with TRL's DPOTrainer: same starting model, pairs, split and hyperparameters.

Our side: `train.align.dpo.DPOObjective` on the one loop. The peer: the same weights converted to a
`transformers` LlamaForCausalLM (our GPT is Llama-shaped: RMSNorm, rotary attention with the
half-split convention, SwiGLU, tied embedding; the script checks the logits agree) trained by TRL's
DPOTrainer (sigmoid loss, β 0.1, reference log-probabilities precomputed, AdamW with β2 0.95, constant
learning rate after warmup, gradient clip 1.0, no weight decay). Both report validation accuracy of
the implicit reward (chosen above rejected) on the same held-out pairs, and wall time on the same cores.

TRL lives in its own environment (never in .venv); that environment must also see torch and this
repository's dependencies, e.g. a venv with a .pth file naming .venv's site-packages:

    python3 -m venv /tmp/venv-trl
    echo "$PWD/.venv/lib/python3.11/site-packages" > /tmp/venv-trl/lib/python3.11/site-packages/main.pth
    /tmp/venv-trl/bin/pip install trl==1.16.0
    /tmp/venv-trl/bin/python bench/bench_dpo_trl.py --policy /tmp/bench-align-real/runs/real-sft \\
        --tokenizer /tmp/bench-align-real/tokenizer/tokenizer.json      # made by bench_align.py real
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PAIRS = REPO.parent / "shared" / "data" / "instruct" / "instruction-data-with-preference.json"

log = logging.getLogger("bench_dpo_trl")


def to_llama(gpt):
    """A LlamaForCausalLM with the GPT's weights (same logits up to float rounding)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    c = gpt.config
    config = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.hidden_dim,
                         num_hidden_layers=c.n_layer, num_attention_heads=c.n_head, num_key_value_heads=c.kv_heads,
                         max_position_embeddings=c.max_seq_len, rms_norm_eps=c.norm_eps, rope_theta=c.rope_theta,
                         rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
                         tie_word_embeddings=c.tie_embeddings, attention_bias=False, mlp_bias=False,
                         hidden_act="silu", head_dim=c.head_dim)
    model = LlamaForCausalLM(config)
    sd = {"model.embed_tokens.weight": gpt.tok_emb.weight, "model.norm.weight": gpt.norm.weight,
          "lm_head.weight": gpt.head.weight}
    for i, b in enumerate(gpt.blocks):
        p = f"model.layers.{i}."
        sd.update({p + "input_layernorm.weight": b.attn_norm.weight, p + "post_attention_layernorm.weight": b.ffn_norm.weight,
                   p + "self_attn.q_proj.weight": b.attn.wq.weight, p + "self_attn.k_proj.weight": b.attn.wk.weight,
                   p + "self_attn.v_proj.weight": b.attn.wv.weight, p + "self_attn.o_proj.weight": b.attn.wo.weight,
                   p + "mlp.gate_proj.weight": b.ffn.w1.weight, p + "mlp.up_proj.weight": b.ffn.w3.weight,
                   p + "mlp.down_proj.weight": b.ffn.w2.weight})
    missing, unexpected = model.load_state_dict({k: v.detach().clone() for k, v in sd.items()}, strict=False)
    assert not unexpected and all(k == "lm_head.weight" for k in missing), (missing, unexpected)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", required=True)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--batch-pairs", type=int, default=16)
    parser.add_argument("--micro", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", default="/tmp/bench-dpo-trl")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    import torch

    torch.set_num_threads(args.threads)
    from train import CheckpointConfig, DataConfig, EvalConfig, LogConfig, OptimConfig, TrainConfig, train
    from train.align.common import gpt_from_payload, load_policy_checkpoint
    from train.align.dpo import DPOObjective
    from train.metrics import read_metrics
    from train.align.preference import read_preference_pairs, split_by_key
    from train.tune.templates import template_from_checkpoint

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    payload, path = load_policy_checkpoint(args.policy)
    template = template_from_checkpoint(payload)

    # ---- ours -------------------------------------------------------------------------------------
    warmup = max(1, args.steps // 20)
    config = TrainConfig(run_dir=str(work / "ours"), max_steps=args.steps, preset="tiny", handle_signals=False,
                         data=DataConfig(micro_batch_size=args.micro, seed=0, prefetch_batches=0, seq_len=256),
                         optim=OptimConfig(lr=args.lr, min_lr=args.lr, warmup_steps=warmup, weight_decay=0.0),
                         eval=EvalConfig(every_steps=0, sample_every_steps=0), checkpoint=CheckpointConfig(every_steps=0),
                         log=LogConfig(every_steps=10, tensorboard=False, plot=False))
    t0 = time.perf_counter()
    train(config, objective=DPOObjective(path, PAIRS, args.tokenizer, val_fraction=0.1, batch_pairs=args.batch_pairs,
                                         beta=args.beta))
    ours_s = time.perf_counter() - t0
    vals = [r for r in read_metrics(work / "ours" / "metrics.jsonl") if r["kind"] == "val"]
    ours = {"wall_s": ours_s, "val_accuracy_before": vals[0]["val_reward_accuracy"],
            "val_accuracy_after": vals[-1]["val_reward_accuracy"], "val_loss_after": vals[-1]["val_loss"],
            "val_margin_after": vals[-1]["val_reward_margin"]}
    log.info("ours: %s", ours)

    # ---- the peer ---------------------------------------------------------------------------------
    from datasets import Dataset
    from transformers import PreTrainedTokenizerFast
    from trl import DPOConfig, DPOTrainer

    gpt = gpt_from_payload(payload, torch.device("cpu"))
    llama = to_llama(gpt).float()
    idx = torch.randint(0, 4000, (2, 40))
    with torch.no_grad():
        ours_logits = gpt(idx, torch.zeros_like(idx))[0]
        peer_logits = llama(idx).logits
    diff = (ours_logits - peer_logits).abs().max().item()
    log.info("converted model: max logit difference %.2e", diff)
    assert diff < 1e-3, diff
    llama.requires_grad_(True)

    tok = PreTrainedTokenizerFast(tokenizer_file=args.tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                  bos_token="<|endoftext|>")
    pairs, _ = read_preference_pairs(PAIRS, template)
    train_pairs, val_pairs = split_by_key(pairs, [p.key for p in pairs], 0.1)

    def rows(ps):  # our prompts start with end-of-text, as in pretraining; TRL appends end-of-text to answers
        return Dataset.from_list([{"prompt": "<|endoftext|>" + p.prompt, "chosen": p.chosen, "rejected": p.rejected}
                                  for p in ps])

    peer_config = DPOConfig(
        output_dir=str(work / "trl"), beta=args.beta, loss_type=["sigmoid"], learning_rate=args.lr,
        lr_scheduler_type="constant_with_warmup", warmup_steps=warmup, weight_decay=0.0, adam_beta2=0.95,
        max_grad_norm=1.0, per_device_train_batch_size=args.micro, per_device_eval_batch_size=args.micro,
        gradient_accumulation_steps=args.batch_pairs // args.micro, max_steps=args.steps, max_length=256,
        precompute_ref_log_probs=True, report_to="none", logging_steps=10, save_strategy="no",
        eval_strategy="no", use_cpu=True, seed=0, dataloader_num_workers=0, bf16=False)
    trainer = DPOTrainer(model=llama, args=peer_config, train_dataset=rows(train_pairs), eval_dataset=rows(val_pairs),
                         processing_class=tok)
    before = trainer.evaluate()
    t0 = time.perf_counter()
    trainer.train()
    peer_s = time.perf_counter() - t0
    after = trainer.evaluate()
    peer = {"wall_s": peer_s, "val_accuracy_before": before.get("eval_rewards/accuracies"),
            "val_accuracy_after": after.get("eval_rewards/accuracies"), "val_loss_after": after.get("eval_loss"),
            "val_margin_after": after.get("eval_rewards/margins")}
    log.info("TRL: %s", peer)
    print(f"{'':>28} {'ours':>10} {'TRL DPOTrainer':>15}")
    for key in ("val_accuracy_before", "val_accuracy_after", "val_margin_after", "val_loss_after", "wall_s"):
        o, p = ours[key], peer[key]
        print(f"{key:>28} {o:>10.4f} {p if p is None else round(p, 4):>15}")
    print(f"wall time ratio TRL / ours: {peer_s / ours_s:.2f} (ours: the whole run, with the reference "
          f"precompute and the evaluations at start and end; TRL: trainer.train() only, its reference "
          f"log-probabilities were computed before)")
    if args.out:
        Path(args.out).write_text(json.dumps({"ours": ours, "trl": peer, "logit_diff": diff}, indent=2))


if __name__ == "__main__":
    main()
