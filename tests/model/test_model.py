"""The GPT model: shapes, presets, initialisation, attention masking, and KV-cache generation."""

from __future__ import annotations

import math

import pytest
import torch

from model import GPT, PRESETS, GPTConfig, KVCache, ModelConfigError, SequenceTooLongError, preset_config
from model.gpt import sample_next_token


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(preset_config("tiny", vocab_size=97, **overrides)).eval()


def test_forward_returns_logits_for_every_position_and_a_scalar_loss_with_targets():
    model = tiny()
    idx = torch.randint(0, 97, (3, 11))
    logits, loss = model(idx, torch.randint(0, 97, (3, 11)))
    assert logits.shape == (3, 11, 97)
    assert loss.ndim == 0
    # An untrained model is close to uniform: loss near log(vocab).
    assert abs(loss.item() - math.log(97)) < 0.5


def test_forward_without_targets_returns_only_the_last_position():
    model = tiny()
    idx = torch.randint(0, 97, (2, 9))
    logits, loss = model(idx)
    full, _ = model(idx, idx)
    assert loss is None and logits.shape == (2, 1, 97)
    torch.testing.assert_close(logits[:, 0], full[:, -1])


def test_targets_of_minus_one_are_ignored_by_the_loss():
    model = tiny()
    idx = torch.randint(0, 97, (1, 8))
    targets = idx.clone()
    _, loss_all = model(idx, targets)
    targets[0, 4:] = -1
    _, loss_half = model(idx, targets)
    logits, _ = model(idx, idx)
    expected = torch.nn.functional.cross_entropy(logits[0, :4], idx[0, :4])
    torch.testing.assert_close(loss_half, expected)
    assert not torch.equal(loss_all, loss_half)


def test_attention_is_causal_so_later_tokens_do_not_change_earlier_logits():
    model = tiny()
    idx = torch.randint(0, 97, (1, 12))
    changed = idx.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 97
    a, _ = model(idx, idx)
    b, _ = model(changed, changed)
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_an_input_longer_than_the_context_raises_a_clear_error():
    model = tiny()
    too_long = torch.zeros(1, model.config.max_seq_len + 1, dtype=torch.long)
    with pytest.raises(SequenceTooLongError, match="max_seq_len=128"):
        model(too_long)


def test_every_preset_builds_and_has_roughly_its_advertised_size():
    expected_millions = {"small": (25, 35), "gpt2-124m": (115, 135), "350m": (320, 380), "1b": (1000, 1200)}
    for name in PRESETS:
        vocab = 50304 if name != "small" else 16384
        with torch.device("meta"):  # no memory is allocated
            model = GPT(preset_config(name, vocab))
        millions = model.num_params() / 1e6
        if name in expected_millions:
            lo, hi = expected_millions[name]
            assert lo <= millions <= hi, (name, millions)


def test_tiny_preset_is_small_enough_for_tests():
    assert tiny().num_params() < 200_000


def test_tied_embedding_shares_one_matrix_and_untied_does_not():
    tied = tiny()
    untied = tiny(tie_embeddings=False)
    assert tied.head.weight is tied.tok_emb.weight
    assert untied.head.weight is not untied.tok_emb.weight
    assert untied.num_params() == tied.num_params() + tied.tok_emb.weight.numel()


def test_no_parameter_is_a_bias():
    model = tiny()
    names = [n for n, _ in model.named_parameters()]
    assert not [n for n in names if n.endswith("bias")]


def test_residual_output_projections_are_initialised_smaller_with_depth():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, n_layer=8, n_head=4, d_model=256, max_seq_len=32))
    wq_std = model.blocks[0].attn.wq.weight.std().item()
    wo_std = model.blocks[0].attn.wo.weight.std().item()
    w2_std = model.blocks[0].ffn.w2.weight.std().item()
    assert wq_std == pytest.approx(0.02, rel=0.05)
    assert wo_std == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert w2_std == pytest.approx(0.02 / math.sqrt(16), rel=0.05)


def test_grouped_query_attention_has_fewer_key_value_weights():
    gqa = tiny()  # tiny uses 2 key/value heads for 4 query heads
    mha = tiny(n_kv_head=None)
    assert gqa.blocks[0].attn.wk.weight.shape[0] == mha.blocks[0].attn.wk.weight.shape[0] // 2


def test_invalid_head_counts_are_rejected_with_the_field_named():
    with pytest.raises(ModelConfigError, match="n_kv_head"):
        GPTConfig(n_head=4, n_kv_head=3, d_model=64)
    with pytest.raises(ModelConfigError, match="n_head"):
        GPTConfig(n_head=5, d_model=64)
    with pytest.raises(ModelConfigError, match="unknown preset"):
        preset_config("huge", 100)


def test_flops_per_token_counts_six_per_weight_plus_attention():
    model = tiny()
    c = model.config
    assert model.flops_per_token(64) == 6 * model.num_params() + 12 * c.n_layer * c.n_head * c.head_dim * 64


def test_prefilling_in_chunks_with_a_cache_matches_one_full_forward():
    model = tiny()
    idx = torch.randint(0, 97, (2, 20))
    cache = KVCache(model.config, 2, torch.device("cpu"), torch.float32)
    model(idx[:, :7], cache=cache)
    model(idx[:, 7:8], cache=cache)
    last, _ = model(idx[:, 8:], cache=cache)
    full, _ = model(idx)
    assert cache.length == 20
    torch.testing.assert_close(last, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_kv_head", [None, 2])
def test_cached_and_uncached_greedy_generation_produce_the_same_tokens(n_kv_head):
    model = tiny(n_kv_head=n_kv_head)
    prompt = torch.randint(0, 97, (2, 5))
    cached = model.generate(prompt, 40, temperature=0)
    uncached = model.generate(prompt, 40, temperature=0, use_cache=False)
    assert cached.shape == (2, 45)
    assert torch.equal(cached, uncached)


def test_cached_and_uncached_sampling_with_a_seed_produce_the_same_tokens():
    model = tiny()
    prompt = torch.randint(0, 97, (1, 4))
    kwargs = dict(temperature=1.0, top_k=20, top_p=0.9, seed=7)
    assert torch.equal(model.generate(prompt, 40, **kwargs), model.generate(prompt, 40, use_cache=False, **kwargs))


def test_the_same_seed_gives_the_same_sample_and_another_seed_another():
    model = tiny()
    prompt = torch.randint(0, 97, (1, 4))
    a = model.generate(prompt, 30, temperature=1.0, seed=1)
    b = model.generate(prompt, 30, temperature=1.0, seed=1)
    c = model.generate(prompt, 30, temperature=1.0, seed=2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_generation_stops_once_every_sequence_has_produced_end_of_text():
    model = tiny()
    prompt = torch.randint(0, 96, (1, 3))
    free = model.generate(prompt, 30, temperature=0)
    eot = int(free[0, 6])  # make the 4th generated token the end-of-text id
    stopped = model.generate(prompt, 30, temperature=0, eot_id=eot)
    first = (stopped[0, 3:] == eot).nonzero()[0].item()
    assert stopped.shape[1] == 3 + first + 1
    assert stopped[0, -1].item() == eot


def test_generation_is_capped_at_the_context_length():
    model = tiny()
    prompt = torch.randint(0, 97, (1, 120))
    out = model.generate(prompt, 50, temperature=0)
    assert out.shape[1] == model.config.max_seq_len


def test_top_k_and_top_p_only_sample_from_the_kept_tokens():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0, -1.0]])
    gen = torch.Generator().manual_seed(0)
    top_k = {sample_next_token(logits, 1.0, 2, None, gen).item() for _ in range(200)}
    assert top_k == {0, 1}
    # probabilities ~ [0.64, 0.23, 0.09, ...]: top_p=0.8 keeps the first two tokens
    top_p = {sample_next_token(logits, 1.0, None, 0.8, gen).item() for _ in range(200)}
    assert top_p == {0, 1}
    assert sample_next_token(logits, 0.0, None, None, gen).item() == 0


def test_a_few_optimizer_steps_overfit_a_fixed_batch():
    torch.manual_seed(0)
    model = GPT(preset_config("tiny", vocab_size=97))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    idx = torch.randint(0, 97, (4, 32))
    losses = []
    for _ in range(30):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_autocast_on_cuda_matches_fp32_closely_and_cache_generation_agrees():
    torch.manual_seed(0)
    model = GPT(preset_config("tiny", vocab_size=97)).cuda().eval()
    idx = torch.randint(0, 97, (2, 64), device="cuda")
    _, loss32 = model(idx, idx)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        _, loss16 = model(idx, idx)
        out = model.generate(idx[:, :8], 20, temperature=0)
    assert abs(loss32.item() - loss16.item()) < 0.05
    assert out.shape == (2, 28)
