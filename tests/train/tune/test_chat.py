"""The chat session: streamed tokens equal the model's own generation, history is trimmed from the
oldest turn near the context, and /reset starts over."""

from __future__ import annotations

import pytest
import torch

from model.gpt import GPT, preset_config
from train.tune.chat import ChatInputError, ChatSession, GenerationOptions, stream_tokens
from train.tune.templates import PromptTemplate

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class CharTokenizer:
    """Characters as ids (enough for the session's encode/decode calls); 0 is end-of-text."""

    specials = {"<|endoftext|>": 0, "<|reserved_0|>": 1, "<|reserved_1|>": 2}

    def token_to_id(self, token):
        return self.specials.get(token)

    def encode(self, text, add_special_tokens=False):
        return type("Encoding", (), {"ids": [3 + (ord(c) % 200) for c in text]})()

    def decode(self, ids):
        return "".join(chr(i - 3 + 97) if i >= 3 else "" for i in ids)


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    gpt = GPT(preset_config("tiny", 256, max_seq_len=96))
    return gpt.eval()


def test_greedy_streamed_tokens_equal_generate(model):
    prompt = [0, 5, 9, 13, 7]
    streamed = list(stream_tokens(model, prompt, GenerationOptions(max_new_tokens=12, temperature=0.0), None,
                                  torch.device("cpu")))
    expected = model.generate(torch.tensor([prompt]), 12, temperature=0.0, use_cache=False)[0, len(prompt):]
    assert streamed == expected.tolist()


def test_streaming_stops_at_end_of_text_and_at_the_context(model):
    prompt = list(range(3, 90))
    tokens = list(stream_tokens(model, prompt, GenerationOptions(max_new_tokens=50, temperature=1.0, top_k=None),
                                None, torch.device("cpu")))
    assert len(tokens) == 96 - len(prompt)


@pytest.mark.parametrize("name", ["alpaca", "chat"])
def test_the_oldest_turns_are_dropped_when_the_conversation_nears_the_context(model, name):
    session = ChatSession(model, CharTokenizer(), PromptTemplate(name), 0, torch.device("cpu"),
                          GenerationOptions(max_new_tokens=8, temperature=0.0))
    if name == "alpaca":  # the preamble alone is longer than this tiny context
        with pytest.raises(ChatInputError, match="shorter message"):
            list(session.reply("hello"))
        assert session.history == []
        return
    for i in range(8):
        "".join(session.reply(f"message {i}"))
        assert len(session.prompt_ids()) + 8 <= 96 or len(session.history) <= 2
    assert session.trimmed_turns > 0
    assert session.history[-2]["content"] == "message 7"
    session.reset()
    assert session.history == []
