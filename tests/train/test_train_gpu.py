"""The trainer on CUDA: bf16 autocast, torch.compile, fused AdamW, pinned prefetch, MFU. Skipped without CUDA."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from train import CheckpointConfig, DataConfig, EvalConfig, LogConfig, OptimConfig, TrainConfig, train
from train.checkpoint import latest_checkpoint
from train.evaluate import evaluate_checkpoint_on_shards
from train.metrics import read_metrics
from train.synthetic import write_synthetic_shards

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_synthetic_shards(tmp_path_factory.mktemp("data") / "shards", vocab_size=256, train_docs=400,
                                  val_docs=40)


def gpu_config(run_dir: Path, shards: Path, **changes) -> TrainConfig:
    return TrainConfig(
        run_dir=str(run_dir), max_steps=30, preset="tiny", global_batch_tokens=2 * 16 * 64, device="cuda",
        data=DataConfig(shards_dir=str(shards), seq_len=64, micro_batch_size=16, prefetch_batches=4),
        optim=OptimConfig(lr=3e-3, min_lr=3e-4, warmup_steps=3),
        eval=EvalConfig(every_steps=10, max_tokens=4096, sample_every_steps=15, sample_tokens=16),
        checkpoint=CheckpointConfig(every_steps=10),
        log=LogConfig(every_steps=5, tensorboard=False, plot=False),
        peak_tflops=100.0,
    ).replace(**changes)


@pytest.mark.parametrize("compile_", [False, True])
def test_bf16_training_on_cuda_learns_and_reports_mfu_and_memory(tmp_path, shards, compile_):
    result = train(gpu_config(tmp_path / "run", shards, compile=compile_))
    assert result.final_step == 30
    assert result.train_losses[-1][1] < result.train_losses[0][1] - 0.5
    assert result.peak_memory_bytes and result.peak_memory_bytes > 0
    records = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"]
    assert all(r["mfu"] is not None and 0 < r["mfu"] < 1 for r in records)
    assert all(math.isfinite(r["grad_norm"]) for r in records)


def test_a_cuda_checkpoint_resumes_and_evaluates_on_cpu(tmp_path, shards):
    train(gpu_config(tmp_path / "run", shards, max_steps=10))
    ev = evaluate_checkpoint_on_shards(latest_checkpoint(tmp_path / "run"), shards, seq_len=64, batch_size=8,
                                       max_tokens=2048, device=torch.device("cpu"))
    assert math.isfinite(ev.loss)
    resumed = train(gpu_config(tmp_path / "run", shards, max_steps=20, resume=True))
    assert resumed.final_step == 20


def test_flash_attention_kernel_accepts_the_models_attention_shapes():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from model import GPT, preset_config

    model = GPT(preset_config("tiny", vocab_size=256)).cuda()
    idx = torch.randint(0, 256, (4, 128), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16), sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        _, loss = model(idx, idx)
    loss.backward()
    assert math.isfinite(loss.item())


def test_compiled_blocks_give_the_eager_loss_and_gradients_under_bf16():
    from model import GPT, preset_config

    torch.manual_seed(0)
    eager = GPT(preset_config("tiny", vocab_size=256)).cuda()
    compiled = GPT(preset_config("tiny", vocab_size=256)).cuda()
    compiled.load_state_dict(eager.state_dict())
    for block in compiled.blocks:
        block.compile()
    idx = torch.randint(0, 256, (8, 128), device="cuda")
    losses = []
    for model in (eager, compiled):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = model(idx, idx)
        loss.backward()
        losses.append(loss.item())
    assert losses[1] == pytest.approx(losses[0], abs=1e-2)
    grad_eager, grad_compiled = eager.tok_emb.weight.grad, compiled.tok_emb.weight.grad
    assert ((grad_compiled - grad_eager).norm() / grad_eager.norm()).item() < 0.05  # bf16 rounding, not a bug


@pytest.mark.parametrize("backend", ["FLASH_ATTENTION", "EFFICIENT_ATTENTION"])
def test_fused_attention_kernels_match_the_math_kernel_on_gpt2_shapes(backend):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=512, n_layer=2, n_head=12, d_model=768, max_seq_len=1024)).cuda()
    idx = torch.randint(0, 512, (2, 1024), device="cuda")
    losses = {}
    for name in ("MATH", backend):
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16), sdpa_kernel(getattr(SDPBackend, name)):
            losses[name] = model(idx, idx)[1].item()
    assert losses[backend] == pytest.approx(losses["MATH"], abs=1e-2)


def test_fused_and_foreach_adamw_take_the_same_step():
    torch.manual_seed(0)
    weights = [torch.randn(64, 64, device="cuda", requires_grad=True) for _ in range(3)]
    copies = [w.detach().clone().requires_grad_(True) for w in weights]
    for params, kwargs in ((weights, {"fused": True}), (copies, {"foreach": True})):
        opt = torch.optim.AdamW(params, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1, **kwargs)
        for step in range(3):
            for p in params:
                p.grad = torch.full_like(p, 0.01 * (step + 1))
            opt.step()
    for a, b in zip(weights, copies):
        assert torch.allclose(a, b, atol=1e-6)


def test_the_prefetch_thread_hands_over_pinned_batches(shards):
    from train.data import TokenBatchLoader, open_split

    loader = TokenBatchLoader(open_split(shards, "train"), seq_len=64, micro_batch_size=4, seed=0,
                              prefetch_batches=2, pin_memory=True)
    try:
        inputs, targets = loader.next_batch()
        assert inputs.is_pinned() and targets.is_pinned()
        assert torch.equal(inputs.cuda(non_blocking=True)[:, 1:].cpu(), targets[:, :-1])
    finally:
        loader.close()
