"""train runs torch on one thread unless --threads says otherwise, as compare does: torch's
default of one thread per core made the README's train example 3-6x slower on a busy
2-core machine."""

import numpy as np
import torch

from margin_softmax import data
from margin_softmax.cli.main import main


def test_train_uses_one_thread_unless_told(tmp_path):
    x, y = data.synthetic_identities(6, 4, 5, seed=0)
    np.savez(tmp_path / "d.npz", features=x, labels=y)
    argv = ["train", str(tmp_path / "d.npz"), "--epochs", "1", "--hidden-dim", "8", "--quiet"]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert main(argv) == 0
        assert torch.get_num_threads() == 1
        assert main([*argv, "--threads", "2"]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
