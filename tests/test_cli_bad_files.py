"""A 0-byte or cut-short input file given to `train` or `eval` gets one line naming the file
and exit status 2, never a traceback from inside NumPy (issue 13, item 4)."""

import numpy as np
import pytest

from margin_softmax.cli.main import main


@pytest.fixture
def good(tmp_path):
    """A whole file of every input kind, small enough that any command on them is quick."""
    rng = np.random.default_rng(0)
    features, labels = rng.normal(size=(12, 3)).astype(np.float32), np.arange(12) % 3
    np.savez(tmp_path / "train.npz", features=features, labels=labels)
    np.save(tmp_path / "train.npy", features)
    np.save(tmp_path / "labels.npy", labels)
    (tmp_path / "labels.txt").write_text("".join(f"speaker{k}\n" for k in labels))
    emb = rng.normal(size=(6, 3))
    np.save(tmp_path / "emb.npy", emb)
    np.savez(tmp_path / "emb.npz", embeddings=emb, names=np.array(list("abcdef")))
    pairs = [(i, j) for i in range(6) for j in range(i + 1, 6)]
    words = ["target" if i % 3 == j % 3 else "nontarget" for i, j in pairs]
    (tmp_path / "trials").write_text(
        "".join(f"{i} {j} {w}\n" for (i, j), w in zip(pairs, words, strict=True)))
    (tmp_path / "scores").write_text("".join(f"{i} {j} {0.1 * (i - j):.2f}\n" for i, j in pairs))
    (tmp_path / "ls.txt").write_text("".join(f"{w} {0.05 * k:.2f}\n" for k, w in enumerate(words)))
    np.savez(tmp_path / "cohort.npz", embeddings=rng.normal(size=(8, 3)), labels=np.arange(8) % 4)
    np.save(tmp_path / "center.npy", rng.normal(size=(5, 3)))
    return tmp_path


# input kind -> (the file it breaks, the command line with that file as F)
KINDS = {
    "train .npz": ("train.npz", ["train", "F"]),
    "train .npy": ("train.npy", ["train", "F", "--labels", "labels.npy"]),
    "train --labels .npy": ("labels.npy", ["train", "train.npy", "--labels", "F"]),
    "train --labels text": ("labels.txt", ["train", "train.npy", "--labels", "F"]),
    "train --embed": ("train.npy", ["train", "train.npz", "--embed", "F",
                                    "--export-embeddings", "out.npy"]),
    "eval --embeddings .npy": ("emb.npy", ["eval", "--embeddings", "F", "--trials", "trials"]),
    "eval --embeddings .npz": ("emb.npz", ["eval", "--embeddings", "F", "--trials", "trials"]),
    "eval --trials": ("trials", ["eval", "--embeddings", "emb.npy", "--trials", "F"]),
    "eval --scores kaldi": ("scores", ["eval", "--trials", "trials", "--scores", "F"]),
    "eval --scores label score": ("ls.txt", ["eval", "--scores", "F"]),
    "eval --cohort": ("cohort.npz", ["eval", "--embeddings", "emb.npy", "--trials", "trials",
                                     "--cohort", "F", "--top-k", "all"]),
    "eval --center": ("center.npy", ["eval", "--embeddings", "emb.npy", "--trials", "trials",
                                     "--center", "F"]),
}


def cut_short(data: bytes, text: bool) -> bytes:
    """The first half of a binary file; a text file cut 3 bytes into its middle line."""
    if not text:
        return data[: len(data) // 2]
    start = data.rfind(b"\n", 0, len(data) // 2) + 1
    return data[: start + 3]


@pytest.mark.parametrize("how", ["0-byte", "cut short"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_broken_input_file_is_one_line_naming_it_and_exit_2(good, kind, how, capsys):
    name, argv = KINDS[kind]
    data = (good / name).read_bytes()
    broken = good / f"broken-{name}"
    broken.write_bytes(b"" if how == "0-byte" else cut_short(data, not name.endswith(("y", "z"))))
    argv = [str(broken) if a == "F" else a if a.startswith("--") or a in ("train", "eval", "all")
            else str(good / a) for a in argv]
    assert main([*argv, "--quiet"] if argv[0] == "train" else argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"margin-softmax {argv[0]}: error: ")
    assert str(broken) in err


def test_a_damaged_array_inside_an_npz_is_named(good, capsys):
    """Whole zip directory, damaged bytes in the middle of the features: the CRC fails."""
    data = bytearray((good / "train.npz").read_bytes())
    middle = len(data) // 4  # inside the first member, 'features'
    data[middle : middle + 8] = bytes(8)
    (good / "damaged.npz").write_bytes(bytes(data))
    assert main(["train", str(good / "damaged.npz"), "--quiet"]) == 2
    assert capsys.readouterr().err == (
        f"margin-softmax train: error: {good / 'damaged.npz'}: array 'features' cannot be read "
        "(BadZipFile: Bad CRC-32 for file 'features.npy')\n")
