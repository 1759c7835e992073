"""A DCP checkpoint's .metadata is a pickle: only DCP's own metadata classes, sizes and dtypes load from
it; a crafted one that reaches os.system through a dotted name runs nothing and is a one-line error."""

from __future__ import annotations

import pickle

import pytest
import torch

from train.checkpoint import load_checkpoint, save_sharded
from train.errors import CheckpointError


def write_dcp_checkpoint(path):
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}}
    save_sharded(path, state, {"step": 1, "model_config": {}, "kind": "pretrain"}, True, lambda: None)
    return path


def dotted_name_payload(command: str) -> bytes:
    """Protocol 4: STACK_GLOBAL("torch.distributed.checkpoint.filesystem", "os.system")(command), the
    module being one that DCP's metadata legitimately names."""
    def unicode(s: str) -> bytes:
        b = s.encode()
        return pickle.SHORT_BINUNICODE + bytes([len(b)]) + b

    return (pickle.PROTO + bytes([4]) + unicode("torch.distributed.checkpoint.filesystem") + unicode("os.system")
            + pickle.STACK_GLOBAL + unicode(command) + pickle.TUPLE1 + pickle.REDUCE + pickle.STOP)


def test_a_real_dcp_checkpoint_still_loads(tmp_path):
    path = write_dcp_checkpoint(tmp_path / "step-00000001.dcp")
    payload = load_checkpoint(path)
    assert torch.equal(payload["model"]["w"], torch.arange(6.0).reshape(2, 3))


def test_the_dotted_name_payload_runs_no_code_and_is_a_one_line_error(tmp_path):
    path = write_dcp_checkpoint(tmp_path / "step-00000001.dcp")
    marker = tmp_path / "pwned"
    (path / ".metadata").write_bytes(dotted_name_payload(f"touch {marker}"))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert not marker.exists()
    message = str(err.value)
    assert "\n" not in message and "os.system" in message and "refusing" in message


@pytest.mark.parametrize("module, name", [("os", "system"), ("torch.distributed.checkpoint.metadata", "os"),
                                          ("builtins", "eval"), ("torch", "load"),
                                          ("torch.distributed.checkpoint.metadata", "Metadata.__init__")])
def test_names_outside_the_list_are_refused(tmp_path, module, name):
    path = write_dcp_checkpoint(tmp_path / "step-00000001.dcp")
    body = pickle.PROTO + bytes([2]) + pickle.GLOBAL + f"{module}\n{name}\n".encode() + pickle.STOP
    (path / ".metadata").write_bytes(body)
    with pytest.raises(CheckpointError, match="refusing"):
        load_checkpoint(path)


def test_resuming_into_a_sharded_layout_refuses_the_payload_in_one_line(tmp_path):
    """The path of `pretrain --resume` on a DCP checkpoint: load_sharded, not load_checkpoint."""
    from train.checkpoint import load_sharded

    path = write_dcp_checkpoint(tmp_path / "step-00000001.dcp")
    marker = tmp_path / "pwned"
    (path / ".metadata").write_bytes(dotted_name_payload(f"touch {marker}"))
    with pytest.raises(CheckpointError, match="refusing torch.distributed.checkpoint.filesystem:os.system"):
        load_sharded(path, {"model": {"w": torch.zeros(2, 3)}}, no_dist=True)
    assert not marker.exists()
