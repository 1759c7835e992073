"""MFU accounting: the peak table by GPU name and the nanoGPT FLOP count (known answers, no GPU needed)."""

from __future__ import annotations

import pytest
import torch

from model import GPT, preset_config
from train.metrics import mfu, peak_flops, peak_flops_for_name


@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA H200", 989), ("NVIDIA H200 NVL", 835), ("NVIDIA GH200 480GB", 989), ("NVIDIA H100 80GB HBM3", 989),
    ("NVIDIA H100 PCIe", 756), ("NVIDIA H100 NVL", 835), ("NVIDIA H20", 148), ("NVIDIA A100-SXM4-80GB", 312),
    ("NVIDIA L40S", 362), ("NVIDIA L4", 121), ("NVIDIA A10G", 70), ("NVIDIA B200", 2250),
])
def test_the_peak_of_a_gpu_is_found_by_its_most_specific_name(name, tflops):
    assert peak_flops_for_name(name) == pytest.approx(tflops * 1e12)


def test_an_unknown_gpu_or_a_cpu_has_no_peak_unless_one_is_given():
    assert peak_flops_for_name("Some Future Accelerator") is None
    assert peak_flops(torch.device("cpu")) is None
    assert peak_flops(torch.device("cpu"), override_tflops=2.5) == 2.5e12


def test_gpt2_124m_flops_per_token_follow_nanogpt_six_n_plus_attention():
    with torch.device("meta"):
        model = GPT(preset_config("gpt2-124m", 50_304))
    n = model.num_params()  # the head is tied to the embedding, so every parameter is a matmul weight
    assert model.flops_per_token(1024) == 6 * n + 12 * 12 * 12 * 64 * 1024
    # 575k tokens/s on one H200 would be 50 % MFU against its 989 TFLOP/s dense bf16 peak
    assert mfu(model.flops_per_token(1024), 575_000, 989e12) == pytest.approx(0.50, abs=0.01)
