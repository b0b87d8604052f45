"""What a speaker-verification engineer trips on: VoxCeleb-style trial lists over row indices,
label files, output paths, and option errors of the CLI."""

import json

import numpy as np
import pytest
import torch

import margin_softmax as ms
from margin_softmax import scoring
from margin_softmax.cli.inputs import read_label_file
from margin_softmax.cli.main import main


def run(argv):
    try:
        return main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse errors
        return exit_.code


@pytest.mark.parametrize(
    "text, enroll, test, labels",
    [
        # VoxCeleb order over row indices: the test rows 1 and 0 look like labels
        ("1 0 1\n0 2 1\n0 3 0\n", ["0", "2", "3"], ["1", "1", "0"], [1, 0, 0]),
        ("1 0 1\n0 0 2\n1 2 3\n", ["0", "0", "2"], ["1", "2", "3"], [1, 0, 1]),
        # Kaldi order over row indices stays Kaldi
        ("0 1 target\n1 0 nontarget\n", ["0", "1"], ["1", "0"], [1, 0]),
    ],
)
def test_trials_over_row_indices_are_read_in_the_order_every_line_fits(
    tmp_path, text, enroll, test, labels
):
    path = tmp_path / "trials.txt"
    path.write_text(text)
    trials = scoring.read_trials(path)
    assert trials.enroll == enroll and trials.test == test
    np.testing.assert_array_equal(trials.labels, labels)


def test_eval_embeddings_npy_with_voxceleb_trials(tmp_path, capsys):
    # rows 0, 1 on one axis, rows 2, 3 on another: targets (0,1), (2,3) score 1, the
    # non-targets 0, so EER 0
    np.save(tmp_path / "e.npy", np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]]))
    (tmp_path / "t.txt").write_text("1 0 1\n0 0 2\n0 1 3\n1 2 3\n")
    assert run(["eval", "--embeddings", tmp_path / "e.npy", "--trials", tmp_path / "t.txt",
                "--json"]) == 0
    out = capsys.readouterr().out
    assert '"targets": 2' in out and '"eer": 0.0' in out


def test_column_labels_in_an_npz_name_the_shape(tmp_path, capsys):
    # labels saved as a column (N, 1) used to say "4 labels for 4 feature rows"
    np.savez(tmp_path / "d.npz", features=np.ones((4, 3), np.float32),
             labels=np.array([[0], [1], [0], [1]]))
    assert run(["train", tmp_path / "d.npz", "--epochs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "d.npz: labels must be 1-D (N,); got shape (4, 1)" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "option, value, fragment",
    [
        ("--checkpoint-dir", "afile", "afile is a file, not a folder"),
        ("--checkpoint-dir", "afile/ck", "afile is a file, not a folder"),
        ("--export-embeddings", "afile/e.npy", "afile is a file, not a folder"),
        ("--export-embeddings", "dir.npy", "is a folder; name a file"),
    ],
)
def test_output_paths_that_cannot_be_written_fail_before_training(
    tmp_path, capsys, monkeypatch, option, value, fragment
):
    monkeypatch.chdir(tmp_path)
    x = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    np.savez("d.npz", features=x, labels=np.arange(8) % 2)
    (tmp_path / "afile").write_text("keep me\n")
    (tmp_path / "dir.npy").mkdir()
    assert run(["train", "d.npz", "--epochs", "1", "--quiet", "--force", option, value]) == 2
    err = capsys.readouterr().err
    assert f"error: {option} {value}: {fragment}" in err and err.count("\n") == 1
    assert (tmp_path / "afile").read_text() == "keep me\n"


@pytest.mark.parametrize("value", ["abc", "nan", "inf"])
def test_a_margin_that_is_not_a_number_names_the_option(tmp_path, capsys, value):
    np.savez(tmp_path / "d.npz", features=np.ones((4, 3), np.float32), labels=np.arange(4) % 2)
    assert run(["train", tmp_path / "d.npz", "--epochs", "1", "--quiet", "--margin", value]) == 2
    err = capsys.readouterr().err
    assert f"argument --margin: expected a number, got '{value}'" in err


@pytest.mark.parametrize("value", ["-1", "inf", "nan"])
def test_a_bad_weight_decay_names_the_option(tmp_path, capsys, value):
    # -1 used to fail inside AdamW without naming the option; inf trained into NaN
    # embeddings and blamed the inputs
    np.savez(tmp_path / "d.npz", features=np.ones((4, 3), np.float32), labels=np.arange(4) % 2)
    argv = ["train", tmp_path / "d.npz", "--epochs", "1", "--quiet", "--weight-decay", value]
    assert run(argv) == 2
    assert f"argument --weight-decay: expected a number >= 0, got '{value}'" in (
        capsys.readouterr().err
    )


def test_a_margin_schedule_that_ends_after_the_last_epoch_names_both_options(tmp_path, capsys):
    x, y = ms.data.synthetic_identities(4, 6, 5, seed=0)
    np.savez(tmp_path / "d.npz", features=x, labels=y)
    argv = ["train", tmp_path / "d.npz", "--epochs", "3", "--quiet", "--margin-schedule", "2", "4"]
    assert run(argv) == 2
    assert ("error: --margin-schedule 2 4: END is past --epochs 3, so the margin would never "
            "reach its value") in capsys.readouterr().err


def test_a_margin_schedule_that_ends_before_it_starts_names_the_option(tmp_path, capsys):
    np.savez(tmp_path / "d.npz", features=np.ones((4, 3), np.float32), labels=np.arange(4) % 2)
    argv = ["train", tmp_path / "d.npz", "--epochs", "1", "--quiet", "--margin-schedule", "5", "2"]
    assert run(argv) == 2
    assert "error: --margin-schedule 5 2: END must be >= START" in capsys.readouterr().err


@pytest.mark.parametrize("impl", ["eager", "auto"])
def test_a_scheduled_hard_margin_out_of_range_is_refused_at_the_forward(impl):
    # WeSpeaker ramps the inter-top-k margin with the margin; a ramp to a negative value
    # (which would make the hard negatives easier) used to pass silently
    head = ms.SubCenterArcFace(8, 10, margin=0.2, scale=32.0, top_k=2, impl=impl)
    scheduler = ms.MarginScheduler(head, iterations_per_epoch=1, increase_start_epoch=1,
                                   fix_start_epoch=1, final_margin=-0.06,
                                   attribute="hard_margin")
    scheduler.step()
    x, y = torch.randn(4, 8), torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"hard_margin must be a finite float in \[0.0, "):
        head(x, y)


@pytest.mark.parametrize("make", [
    lambda: ms.ElasticArcFace(8, 10, margin=0.2, std=0.01, scale=30.0, seed=0),
    lambda: ms.ElasticCosFace(8, 10, margin=0.2, std=0.01, scale=30.0, seed=0),
    lambda: ms.AdaFace(8, 10, margin=0.2, scale=30.0),
], ids=["elastic-arcface", "elastic-cosface", "adaface"])
@pytest.mark.parametrize("training", [True, False])
def test_a_scheduled_margin_out_of_range_is_refused_at_the_forward(make, training):
    # a final margin given in degrees (as PyTorch Metric Learning takes it): ArcFace and
    # CurricularFace refuse it at the forward; these heads checked it only at construction
    head = make().train(training)
    scheduler = ms.MarginScheduler(head, iterations_per_epoch=1, increase_start_epoch=1,
                                   fix_start_epoch=1, final_margin=20.0)
    scheduler.step()
    with pytest.raises(ValueError, match="margin must be a finite float in"):
        head(torch.randn(4, 8), torch.tensor([0, 1, 2, 3]))


def test_margin_given_twice_is_an_error_not_a_silent_choice(tmp_path, capsys):
    np.savez(tmp_path / "d.npz", features=np.ones((4, 3), np.float32), labels=np.arange(4) % 2)
    argv = ["train", tmp_path / "d.npz", "--epochs", "1", "--quiet", "--margin", "0.2",
            "--param", "margin=0.3"]
    assert run(argv) == 2
    assert "--margin 0.2 and --param margin=0.3: give the margin once" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "compare"])
@pytest.mark.parametrize("value", ["-1", str(2**64), str(2**70), "1.5"])
def test_a_seed_out_of_range_names_the_option_and_the_range(tmp_path, capsys, command, value):
    # -1 said "expected non-negative integer" (NumPy) and 2**70 "Overflow when unpacking long
    # long" (torch.manual_seed), neither naming --seed; torch takes seeds up to 2**64 - 1
    np.savez(tmp_path / "d.npz", features=np.ones((4, 3), np.float32), labels=np.arange(4) % 2)
    argv = (["train", tmp_path / "d.npz", "--epochs", "1", "--quiet"] if command == "train"
            else ["compare", "--out", tmp_path / "out", "--losses", "arcface", "--identities",
                  "20", "--samples-per-identity", "4", "--trials", "40", "--epochs", "1",
                  "--epochs-2d", "1", "--quiet"])
    assert run([*argv, "--seed", value]) == 2
    err = capsys.readouterr().err
    assert f"argument --seed: expected an integer in [0, {2**64 - 1}], got '{value}'" in err
    assert err.count("\n") == 1


def test_the_largest_seed_torch_takes_trains(tmp_path):
    np.savez(tmp_path / "d.npz", features=np.ones((4, 3), np.float32), labels=np.arange(4) % 2)
    argv = ["train", tmp_path / "d.npz", "--epochs", "1", "--quiet", "--seed", str(2**64 - 1)]
    assert run(argv) == 0


BOM_TRIALS = {
    "kaldi": "a b target\na c nontarget\nc d target\nb d nontarget\n",
    "voxceleb": "1 a b\n0 a c\n1 c d\n0 b d\n",
}


@pytest.mark.parametrize("style", ["kaldi", "voxceleb"])
def test_a_byte_order_mark_at_the_start_of_a_trial_list_is_ignored(tmp_path, capsys, style):
    # Windows editors start a UTF-8 file with a BOM; it was read as part of the first field
    # (enroll name '\ufeffa' or label '\ufeff1') of line 1
    names = np.array(["a", "b", "c", "d"])
    np.savez(tmp_path / "e.npz", embeddings=np.array([[1.0, 0], [2, 0], [0, 1], [0, 3]]),
             names=names)
    (tmp_path / "t.txt").write_text(BOM_TRIALS[style], encoding="utf-8-sig")
    trials = scoring.read_trials(tmp_path / "t.txt")
    assert trials.enroll == ["a", "a", "c", "b"] and trials.test == ["b", "c", "d", "d"]
    np.testing.assert_array_equal(trials.labels, [1, 0, 1, 0])
    assert run(["eval", "--embeddings", tmp_path / "e.npz", "--trials", tmp_path / "t.txt",
                "--json"]) == 0
    out = capsys.readouterr().out
    assert '"targets": 2' in out and '"eer": 0.0' in out


def test_a_byte_order_mark_at_the_start_of_a_score_file_is_ignored(tmp_path, capsys):
    (tmp_path / "t.txt").write_text(BOM_TRIALS["kaldi"])
    (tmp_path / "s.txt").write_text("a b 0.9\na c 0.1\nc d 0.8\nb d 0.2\n", encoding="utf-8-sig")
    (tmp_path / "ls.txt").write_text("target 0.9\nnontarget 0.1\n", encoding="utf-8-sig")
    assert run(["eval", "--trials", tmp_path / "t.txt", "--scores", tmp_path / "s.txt",
                "--json"]) == 0
    assert run(["eval", "--scores", tmp_path / "ls.txt", "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count('"targets": 2') == 1 and out.count('"targets": 1') == 1
    assert out.count('"eer": 0.0') == 2


def test_a_byte_order_mark_at_the_start_of_a_label_file_is_ignored(tmp_path):
    # '\ufeffspk1' on line 1 was a class of its own, apart from 'spk1' on line 3
    (tmp_path / "labels.txt").write_text("spk1\nspk2\nspk1\nspk2\n", encoding="utf-8-sig")
    labels = read_label_file(tmp_path / "labels.txt")
    assert labels.tolist() == ["spk1", "spk2", "spk1", "spk2"]


@pytest.mark.parametrize("top_k", [10, 11, -1, 2.0])
def test_a_top_k_set_out_of_range_after_construction_is_refused_at_the_forward(top_k):
    # a config or scheduler setting top_k >= num_classes after construction reached
    # torch.topk: a RuntimeError for 11 or -1, and top_k == num_classes silently penalised
    # every non-target class
    head = ms.SubCenterArcFace(8, 10, margin=0.2, scale=32.0, hard_margin=0.06, top_k=2)
    head.top_k = top_k
    with pytest.raises(ValueError, match=r"top_k must be an int in \[0, num_classes - 1 = 9\]"):
        head(torch.randn(4, 8), torch.tensor([0, 1, 2, 3]))


FLOAT64_STATE = {  # head -> its running state, set to values bfloat16 cannot hold
    "adacos": (lambda: ms.AdaCos(8, 10, scale=12.917), {"adaptive_scale": 12.917}),
    "adaface": (lambda: ms.AdaFace(8, 10), {"batch_mean": 20.3, "batch_std": 5.71}),
    "curricularface": (lambda: ms.CurricularFace(8, 10), {"t": 0.1234}),
}
CONVERSIONS = {
    "to-bfloat16": lambda head: head.to(torch.bfloat16),
    "half": lambda head: head.half(),
    "float": lambda head: head.float(),
    "meta-bfloat16": lambda head: head.to("meta", torch.bfloat16),
}


@pytest.mark.parametrize("conversion", CONVERSIONS)
@pytest.mark.parametrize("name", FLOAT64_STATE)
def test_running_state_stays_float64_when_the_head_changes_dtype(name, conversion):
    # .to(torch.bfloat16) rounded AdaCos's float64 scale 12.917 to 12.875 (and AdaFace's and
    # CurricularFace's EMAs likewise) for the rest of training; the state follows the
    # device only
    make, state = FLOAT64_STATE[name]
    head = make()
    for key, value in state.items():
        getattr(head, key).fill_(value)
    head = CONVERSIONS[conversion](torch.nn.Sequential(head))[0]  # also through a parent
    weight_dtype = torch.float32 if conversion == "float" else head.weight.dtype
    assert head.weight.dtype == weight_dtype != torch.float64
    for key, value in state.items():
        buffer = getattr(head, key)
        assert buffer.dtype == torch.float64 and buffer.device == head.weight.device
        if conversion != "meta-bfloat16":
            assert buffer.item() == value
    if conversion == "meta-bfloat16":
        return
    saved = head.state_dict()
    fresh = make()
    fresh.load_state_dict(saved)
    for key, value in state.items():
        assert saved[key].dtype == torch.float64 and getattr(fresh, key).item() == value
    head.train()(torch.randn(4, 8, dtype=head.weight.dtype), torch.tensor([0, 1, 2, 3]))
    assert all(getattr(head, key).dtype == torch.float64 for key in state)


def test_train_export_serves_as_centre_and_speaker_mean_cohort(tmp_path, capsys):
    """The recipe: train, export the training set (.npz with labels) and a test set, then
    score test trials centred on the training mean and AS-normed against its speakers."""
    x, y = ms.data.synthetic_identities(12, 10, 6, seed=4)
    train, test = y < 8, y >= 8  # four identities never seen in training
    np.savez(tmp_path / "train.npz", features=x[train], labels=y[train])
    np.save(tmp_path / "test.npy", x[test])
    tiny = ["--epochs", "3", "--batch-size", "16", "--hidden-dim", "16", "--embedding-dim",
            "4", "--threads", "1", "--quiet"]
    assert run(["train", tmp_path / "train.npz", *tiny, "--checkpoint-dir", tmp_path / "ck",
                "--export-embeddings", tmp_path / "emb_train.npz"]) == 0
    assert run(["train", tmp_path / "train.npz", *tiny, "--checkpoint-dir", tmp_path / "ck",
                "--resume", "--embed", tmp_path / "test.npy",
                "--export-embeddings", tmp_path / "emb_test.npy"]) == 0
    speaker = y[test]
    lines = [f"{a} {b} {'target' if speaker[a] == speaker[b] else 'nontarget'}"
             for a in range(len(speaker)) for b in range(a + 1, len(speaker))]
    (tmp_path / "trials").write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert run(["eval", "--embeddings", tmp_path / "emb_test.npy", "--trials",
                tmp_path / "trials", "--center", tmp_path / "emb_train.npz", "--cohort",
                tmp_path / "emb_train.npz", "--top-k", "5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["cohort_size"] == 8  # one mean per training speaker
    assert result["trials"] == len(lines) and 0 <= result["eer"] <= 0.5
