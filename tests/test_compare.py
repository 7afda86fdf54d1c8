"""amnp compare: one run per loss, a table, figures; resumable and interruptible."""
import json
import os
import signal

import pytest

from amnp import checkpoint, cli, compare
from amnp.compare import Entry, entry_title, parse_entry
from amnp.config import TrainConfig
from amnp.training import Trainer

from .test_training import tiny_dataset

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(cli, "open_dataset", lambda config: tiny_dataset(seed=config.seed))
    monkeypatch.setattr(compare, "SPHERE_STEPS", 5)


def test_entries_parse_and_refuse_what_a_loss_does_not_take():
    assert parse_entry("am-softmax:m=0.3:s=20") == Entry("am-softmax:m=0.3:s=20", "am-softmax", {"m": 0.3, "s": 20.0})
    assert parse_entry("am-softmax:normalize_features=false").options == {"normalize_features": False}
    assert entry_title(parse_entry("am-softmax:normalize_features=false")) == "am-softmax w/o FN"
    assert entry_title(parse_entry("sphereface:m=4")) == "sphereface m=4"
    with pytest.raises(ValueError, match="does not take 'm'"):
        parse_entry("softmax:m=0.3")
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_entry("arcface:m")
    with pytest.raises(ValueError, match="not a number, true or false"):
        parse_entry("arcface:m=big")
    with pytest.raises(ValueError, match="unknown loss 'cosface'"):
        parse_entry("cosface")


def test_compare_writes_the_table_and_figures_and_skips_finished_runs(tmp_path, tiny, capsys):
    out = tmp_path / "cmp"
    arguments = ["compare", "--out", str(out), "--iters", "3", "--batch-size", "8", "--seeds", "0",
                 "--losses", "softmax,am-softmax:m=0.3,sphereface"]
    assert cli.main(arguments) == 0
    printed = capsys.readouterr().out
    assert "[1/3] softmax" in printed and "[3/3] sphereface" in printed
    table = (out / "comparison.md").read_text()
    for title in ("| softmax |", "| am-softmax m=0.3 |", "| sphereface |"):
        assert title in table
    assert "DIR@FAR=1e-2 (rank 1)" in table and "TAR@FAR=1e-5 (all pairs)" in table and "train time" in table
    assert "one seed: each interval is the 95% bootstrap interval" in table.lower()
    runs = json.loads((out / "comparison.json").read_text())["runs"]
    assert [r["steps"] for r in runs] == [3, 3, 3]
    assert all("dir_at_far" in r["metrics"] for r in runs)
    for name in ("roc.png", "target_logits.png", "features_on_sphere.png"):
        assert (out / "figures" / name).read_bytes()[:8] == PNG_MAGIC
    checkpoints = {name: (out / "seed-0" / name / "checkpoint.npz").read_bytes() for name in ("softmax", "sphereface")}
    assert cli.main(arguments) == 0
    assert printed.count("finished earlier") == 0
    assert capsys.readouterr().out.count("finished earlier") == 3
    assert {name: (out / "seed-0" / name / "checkpoint.npz").read_bytes() for name in checkpoints} == checkpoints


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_compare_after_a_stop_signal_keeps_finished_runs_and_continues(tmp_path, tiny, monkeypatch, capsys,
                                                                     stop_signals_as_from_a_shell, signum):
    out = tmp_path / "cmp"
    arguments = ["compare", "--out", str(out), "--iters", "4", "--batch-size", "8", "--seeds", "0",
                 "--losses", "softmax,arcface"]
    step = Trainer.train_step

    def interrupted(self, t):
        if self.config.loss == "arcface" and t == 1:
            os.kill(os.getpid(), signum)
        return step(self, t)

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    assert cli.main(arguments) == 128 + signum
    captured = capsys.readouterr()
    assert "continue with: amnp compare --out" in captured.out
    assert captured.err.strip().splitlines()[-1] == f"amnp: interrupted by {signal.Signals(signum).name}"
    assert checkpoint.read(out / "seed-0" / "arcface" / "checkpoint.npz")[2]["step"] == 2
    assert (out / "seed-0" / "softmax" / "eval.json").exists() and not (out / "comparison.md").exists()
    monkeypatch.setattr(Trainer, "train_step", step)
    assert cli.main(arguments) == 0
    printed = capsys.readouterr().out
    assert "[1/2] softmax, seed 0: finished earlier" in printed and "[2/2] arcface, seed 0: steps 2 to 4" in printed


def test_compare_from_python_resumes_with_the_default_backend(tmp_path, monkeypatch):
    """compare() called with backend=None (the library default) finds its own runs again."""
    monkeypatch.setattr(compare, "SPHERE_STEPS", 2)
    base = TrainConfig(iters=2, epochs=None, batch_size=8)
    entries = [parse_entry("softmax")]
    first = compare.compare(entries, base, lambda seed: tiny_dataset(seed=seed), str(tmp_path / "c"))
    assert compare.compare(entries, base, lambda seed: tiny_dataset(seed=seed), str(tmp_path / "c")) == first


def test_compare_from_python_records_the_seeds_it_ran_not_the_base_configs(tmp_path, monkeypatch):
    monkeypatch.setattr(compare, "SPHERE_STEPS", 2)
    base = TrainConfig(iters=2, epochs=None, batch_size=8, seed=0)
    compare.compare([parse_entry("softmax")], base, lambda seed: tiny_dataset(seed=seed), str(tmp_path / "c"),
                    seeds=[3])
    result = json.loads((tmp_path / "c" / "comparison.json").read_text())
    assert result["seeds"] == [3] and result["config"]["seed"] == 3


def test_compare_refuses_a_directory_of_other_settings(tmp_path, tiny, capsys):
    out = tmp_path / "cmp"
    assert cli.main(["compare", "--out", str(out), "--iters", "2", "--batch-size", "8", "--seeds", "0",
                     "--losses", "softmax"]) == 0
    assert cli.main(["compare", "--out", str(out), "--iters", "3", "--batch-size", "8", "--seeds", "0",
                     "--losses", "softmax"]) == cli.EXIT_BAD_INPUT
    assert "holds a run with other settings than this comparison's (iters)" in capsys.readouterr().err
    assert cli.main(["compare", "--out", str(out), "--losses", "softmax,softmax"]) == cli.EXIT_BAD_INPUT
    assert "names an entry twice" in capsys.readouterr().err


def test_more_seeds_reuse_the_finished_runs_and_give_paired_verdicts(tmp_path, tiny, capsys):
    out = tmp_path / "cmp"
    common = ["compare", "--out", str(out), "--iters", "2", "--batch-size", "8", "--losses", "softmax,am-softmax"]
    assert cli.main(common + ["--seeds", "0"]) == 0
    checkpoint = (out / "seed-0" / "softmax" / "checkpoint.npz").read_bytes()
    capsys.readouterr()
    assert cli.main(common + ["--seeds", "0,1,2"]) == 0
    printed = capsys.readouterr().out
    assert "[1/6] softmax, seed 0: finished earlier" in printed and "[3/6] softmax, seed 1: steps 0 to 2" in printed
    assert (out / "seed-0" / "softmax" / "checkpoint.npz").read_bytes() == checkpoint
    result = json.loads((out / "comparison.json").read_text())
    assert result["seeds"] == [0, 1, 2] and result["reference"] == "am-softmax"
    assert sorted((r["entry"], r["seed"]) for r in result["runs"]) == sorted(
        (e, s) for e in ("softmax", "am-softmax") for s in (0, 1, 2))
    [pair] = result["paired"]
    assert pair["entry"] == "softmax" and pair["seeds"] == [0, 1, 2]
    accuracy = pair["metrics"]["verification (10 folds)"]
    runs = {(r["entry"], r["seed"]): r["metrics"]["verification_accuracy"] for r in result["runs"]}
    differences = [runs["softmax", s] - runs["am-softmax", s] for s in (0, 1, 2)]
    assert accuracy["difference"] == pytest.approx(sum(differences) / 3)
    assert accuracy["verdict"] in ("ahead", "behind", "no difference resolved")
    table = (out / "comparison.md").read_text()
    assert "| loss − am-softmax |" in table and "[95% t interval over seeds]" in table


def test_reference_must_be_one_of_the_losses_and_seeds_must_be_distinct(tmp_path, tiny, capsys):
    out = str(tmp_path / "cmp")
    assert cli.main(["compare", "--out", out, "--losses", "softmax", "--reference", "arcface"]) == cli.EXIT_BAD_INPUT
    assert "--reference arcface trains as none of the compared losses (softmax)" in capsys.readouterr().err
    assert cli.main(["compare", "--out", out, "--losses", "softmax", "--seeds", "1,1"]) == cli.EXIT_BAD_INPUT
    assert "--seeds takes distinct integers >= 0" in capsys.readouterr().err
    assert cli.main(["compare", "--out", out, "--losses", "softmax", "--seeds", "a"]) == cli.EXIT_BAD_INPUT
    assert "--seeds takes comma-separated integers" in capsys.readouterr().err
    assert compare.find_reference([parse_entry("softmax"), parse_entry("am-softmax:m=0.35")], None).name == \
        "am-softmax:m=0.35"


def test_a_one_seed_comparison_of_the_old_layout_is_refused_with_the_way_to_reuse_it(tmp_path, tiny, capsys):
    out = tmp_path / "cmp"
    assert cli.main(["compare", "--out", str(out), "--iters", "2", "--batch-size", "8", "--seeds", "0",
                     "--losses", "softmax"]) == 0
    (out / "seed-0" / "softmax").rename(out / "softmax")  # where an earlier amnp kept it
    arguments = ["compare", "--out", str(out), "--iters", "2", "--batch-size", "8", "--seeds", "0",
                 "--losses", "softmax"]
    assert cli.main(arguments) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a one-seed comparison of an earlier amnp" in err
    assert f"move each {out}/<entry> to {out}/seed-<its seed>/<entry>" in err
    (out / "softmax").rename(out / "seed-0" / "softmax")
    assert cli.main(arguments) == 0
    assert "softmax, seed 0: finished earlier" in capsys.readouterr().out


@pytest.mark.parametrize("seeds", [[], [1, 1]], ids=["none", "repeated"])
def test_compare_from_python_refuses_seeds_that_are_not_distinct(tmp_path, seeds):
    with pytest.raises(ValueError, match=rf"seeds must be distinct and at least one, got \[{', '.join(map(str, seeds))}\]"):
        compare.compare([parse_entry("softmax")], TrainConfig(iters=2, epochs=None, batch_size=8),
                        lambda seed: tiny_dataset(seed=seed), str(tmp_path / "c"), seeds=seeds)
    assert not (tmp_path / "c").exists()
