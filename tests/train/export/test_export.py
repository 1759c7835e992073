"""`crawlgpt export`: the Hugging Face folder computes what our model computes (logits, greedy text,
token ids), stores a tied embedding once, and refuses to clobber an export."""

from __future__ import annotations

import json

import pytest
import torch

from lm_fixtures import tiny_config, train_tiny_tokenizer, write_tiny_checkpoint
from model.gpt import apply_rope, rope_tables
from pipeline.tokenizer_train import TextCodec
from train.checkpoint import load_checkpoint, model_from_checkpoint
from train.export.hf import ExportConfig, ExportError, export_checkpoint, permute_interleaved_to_half

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    return train_tiny_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def exported(request, tokenizer_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    ckpt = write_tiny_checkpoint(root / "run", tokenizer_path, tiny_config(tie=request.param))
    result = export_checkpoint(ckpt, root / "hf", tokenizer_path)
    ours = model_from_checkpoint(load_checkpoint(ckpt)).eval()
    hf = transformers.AutoModelForCausalLM.from_pretrained(result.out_dir, dtype=torch.float32).eval()
    return ours, hf, result


def test_exported_logits_equal_ours_in_fp32(exported):
    ours, hf, _ = exported
    idx = torch.randint(0, ours.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, _ = ours(idx, targets=torch.zeros_like(idx))  # with targets: logits of every position
        got = hf(idx).logits
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_exported_greedy_generation_gives_our_tokens(exported):
    ours, hf, _ = exported
    prompt = torch.tensor([[0, 5, 17, 42, 9]])
    want = ours.generate(prompt, max_new_tokens=20, temperature=0.0, eot_id=None)
    got = hf.generate(prompt, max_new_tokens=20, do_sample=False, min_new_tokens=20,
                      attention_mask=torch.ones_like(prompt))
    assert got.tolist() == want.tolist()


def test_export_config_describes_the_model(exported):
    ours, hf, result = exported
    c = ours.config
    config = json.loads((result.out_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_key_value_heads"], config["num_attention_heads"]) == (c.kv_heads, c.n_head) == (2, 4)
    assert config["rope_parameters"]["rope_theta"] == config["rope_theta"] == c.rope_theta
    assert config["tie_word_embeddings"] == c.tie_embeddings
    assert config["bos_token_id"] == config["eos_token_id"] == 0
    generation = json.loads((result.out_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 0
    assert result.num_params == ours.num_params()


def test_tied_embedding_is_stored_once_and_untied_head_separately(exported):
    from safetensors import safe_open

    ours, _, result = exported
    with safe_open(result.out_dir / "model.safetensors", framework="pt") as f:
        names = set(f.keys())
        embedding = f.get_tensor("model.embed_tokens.weight")
        head = f.get_tensor("lm_head.weight") if "lm_head.weight" in names else None
    assert ("lm_head.weight" in names) is (not ours.config.tie_embeddings)
    torch.testing.assert_close(embedding, ours.tok_emb.weight.detach())
    if head is not None:
        torch.testing.assert_close(head, ours.head.weight.detach())
        assert not torch.equal(head, embedding)


def test_exported_tokenizer_gives_our_ids(exported, tokenizer_path):
    _, _, result = exported
    hf_tok = transformers.AutoTokenizer.from_pretrained(result.out_dir)
    codec = TextCodec(tokenizer_path)
    for text in ["The cat sat on the mat.", "  Pour water, then  drink!\nNew line é 😀", "x"]:
        assert hf_tok(text)["input_ids"] == codec.encode(text)
        assert hf_tok.decode(codec.encode(text)) == text
    assert hf_tok.eos_token_id == hf_tok.bos_token_id == 0


def test_export_refuses_an_existing_export_without_overwrite(exported, tokenizer_path):
    _, _, result = exported
    with pytest.raises(ExportError, match="--overwrite"):
        export_checkpoint(result.checkpoint, result.out_dir, tokenizer_path)
    again = export_checkpoint(result.checkpoint, result.out_dir, tokenizer_path, ExportConfig(overwrite=True))
    assert (again.out_dir / "config.json").is_file()


def test_export_without_a_tokenizer_names_the_option(tmp_path, tokenizer_path):
    ckpt = write_tiny_checkpoint(tmp_path / "run", tokenizer_path, tiny_config())
    payload = load_checkpoint(ckpt)
    payload["data"]["shards_dir"] = str(tmp_path / "nowhere")
    torch.save(payload, ckpt)
    with pytest.raises(ExportError, match="--tokenizer"):
        export_checkpoint(ckpt, tmp_path / "hf")


def test_permutation_turns_interleaved_rotary_into_rotate_half():
    """A model rotating adjacent pairs gives the same attention scores as the permuted rotate-half one."""
    torch.manual_seed(0)
    n_heads, hd, d, T = 2, 8, 16, 5
    wq, wk = torch.randn(n_heads * hd, d), torch.randn(n_heads * hd, d)
    x = torch.randn(1, T, d)
    cos, sin = rope_tables(hd, T, 10000.0)

    def interleaved(t):  # (1, h, T, hd): rotate (t[2i], t[2i+1]) by angle i
        a, b = t[..., 0::2], t[..., 1::2]
        return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)

    def heads(w):
        return (x @ w.T).view(1, T, n_heads, hd).transpose(1, 2)

    want = interleaved(heads(wq)) @ interleaved(heads(wk)).transpose(-1, -2)
    pq, pk = permute_interleaved_to_half(wq, n_heads), permute_interleaved_to_half(wk, n_heads)
    got = apply_rope(heads(pq), cos, sin) @ apply_rope(heads(pk), cos, sin).transpose(-1, -2)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_export_command_writes_a_loadable_folder(tmp_path, tokenizer_path):
    from click.testing import CliRunner

    from cli import main

    ckpt = write_tiny_checkpoint(tmp_path / "run", tokenizer_path, tiny_config(tie=False))
    out = tmp_path / "hf"
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(ckpt.parent.parent), "--out", str(out),
                                       "--tokenizer", str(tokenizer_path), "--dtype", "bfloat16"])
    assert result.exit_code == 0, result.output
    assert "exported to" in result.output
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and not config["tie_word_embeddings"]
    again = CliRunner().invoke(main, ["export", "--checkpoint", str(ckpt), "--out", str(out),
                                      "--tokenizer", str(tokenizer_path)])
    assert again.exit_code != 0 and "--overwrite" in again.output


def test_gguf_file_reads_back_with_llama_cpp_names_and_rotary_order(tmp_path, tokenizer_path):
    gguf = pytest.importorskip("gguf")
    from train.export.hf import export_gguf

    ckpt = write_tiny_checkpoint(tmp_path / "run", tokenizer_path, tiny_config(tie=True, vocab_size=448))
    ours = model_from_checkpoint(load_checkpoint(ckpt))
    path = export_gguf(ckpt, tmp_path / "model.gguf", tokenizer_path)
    reader = gguf.GGUFReader(path)

    def field(name):
        f = reader.fields[name]
        return f.parts[f.data[0]].tolist() if len(f.data) == 1 else [bytes(f.parts[i]).decode() for i in f.data]

    assert field("general.architecture") == [*b"llama"]
    assert field("llama.attention.head_count") == [4] and field("llama.attention.head_count_kv") == [2]
    assert field("llama.rope.freq_base") == [500.0] and field("llama.context_length") == [96]
    tokens = field("tokenizer.ggml.tokens")
    assert len(tokens) == 448 and tokens[0] == "<|endoftext|>" and tokens[-1] == "[PAD447]"
    tensors = {t.name: torch.from_numpy(t.data.copy()) for t in reader.tensors}
    assert "output.weight" not in tensors  # tied: llama.cpp uses token_embd as the head
    torch.testing.assert_close(tensors["token_embd.weight"].view(448, 32), ours.tok_emb.weight.detach())
    q = tensors["blk.1.attn_q.weight"].view(32, 32)
    k = tensors["blk.1.attn_k.weight"].view(16, 32)
    torch.testing.assert_close(permute_interleaved_to_half(q, 4), ours.blocks[1].attn.wq.weight.detach())
    torch.testing.assert_close(permute_interleaved_to_half(k, 2), ours.blocks[1].attn.wk.weight.detach())
    assert not torch.equal(q, ours.blocks[1].attn.wq.weight.detach())
