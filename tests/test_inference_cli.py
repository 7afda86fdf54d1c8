"""A trained run used on other data: `amnp eval --pairs`, `amnp embed`, `amnp verify`,
`amnp.load_run`, and the options and protocols the CLI refuses."""
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

import amnp
import amnp.inference
import amnp.parallel
from amnp import checkpoint, cli
from amnp.functional import l2_normalize_forward
from amnp.inference import embed


def write_tree(root, identities, per_identity, size=16, lfw_names=False, seed=0):
    """root/<identity>/<image>: noisy copies of one random RGB prototype per identity."""
    rng = np.random.default_rng(seed)
    for name in identities:
        prototype = rng.integers(0, 256, (size, size, 3))
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(1, per_identity + 1):
            pixels = np.clip(prototype + rng.normal(0, 20, prototype.shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / (f"{name}_{k:04d}.jpg" if lfw_names else f"{k}.png"))
    return root


LFW_PAIRS = ("2 2\nAa_A 1 2\nBb_B 1 3\nAa_A 1 Cc_C 1\nBb_B 2 Dd_D 1\n"
             "Ee_E 1 2\nFf_F 2 3\nEe_E 3 Gg_G 3\nFf_F 1 Hh_H 2\n")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run trained for 2 steps on 12 face-like identities (16x16 RGB), its eval.json written,
    and an LFW-layout tree of 8 other identities with a 2-fold pairs.txt."""
    base = tmp_path_factory.mktemp("inference")
    faces = write_tree(base / "faces", [f"person{i:02d}" for i in range(12)], 4)
    lfw = write_tree(base / "lfw", ["Aa_A", "Bb_B", "Cc_C", "Dd_D", "Ee_E", "Ff_F", "Gg_G", "Hh_H"], 3,
                     lfw_names=True, seed=1)
    (base / "pairs.txt").write_text(LFW_PAIRS)
    run = base / "run"
    assert cli.main(["train", "--dataset", f"folder:{faces}", "--iters", "2", "--batch-size", "8",
                     "--out", str(run)]) == 0
    return {"base": base, "run": run, "lfw": lfw, "pairs": base / "pairs.txt", "faces": faces}


def files_under(*roots):
    return {os.path.join(d, f) for root in roots for d, _, names in os.walk(root) for f in names}


@pytest.fixture
def inference_only(monkeypatch):
    """Inference must build no trainer or optimizer and load no training data."""
    def forbidden(*args, **kwargs):
        raise AssertionError("inference must not build this")

    for target in ("amnp.training.Trainer.__init__", "amnp.optim.SGD.__init__",
                   "amnp.data.load_folder_dataset", "amnp.data.load_glyphs", "amnp.cli.open_dataset"):
        monkeypatch.setattr(target, forbidden)


def test_load_run_builds_the_network_only(trained, inference_only):
    run = amnp.load_run(trained["run"])
    assert run.image_shape == (3, 16, 16) and run.mirror is True and run.step == 2
    assert run.config.dataset == f"folder:{trained['faces']}"
    params, _, meta = checkpoint.read(trained["run"] / "checkpoint.npz")
    assert meta["image_shape"] == [3, 16, 16]
    for name, value in run.net.state_dict().items():
        np.testing.assert_array_equal(value, params[f"net.{name}"])


def test_eval_pairs_writes_the_eval_json_keys_next_to_the_run(trained, capsys, inference_only):
    before = (trained["run"] / "eval.json").read_text()
    assert cli.main(["eval", str(trained["run"]), "--pairs", str(trained["pairs"]),
                     "--images", str(trained["lfw"])]) == 0
    printed = capsys.readouterr().out
    assert "(2 folds, 8 pairs)" in printed, "each fold has its own identities: said plainly"
    assert "DIR@FAR=1e-2" in printed and "impostor probes" in printed
    written = json.loads((trained["run"] / "eval-lfw.json").read_text())
    assert set(written) == set(json.loads(before))
    assert written["num_pairs"] == 8 and written["num_folds"] == 2 and written["mirror_fused"] is True
    assert (trained["run"] / "eval.json").read_text() == before, "the run's own evaluation stays"


def test_embed_and_verify_agree(trained, tmp_path, capsys, inference_only):
    out = tmp_path / "features"  # no .npz suffix: written exactly there
    assert cli.main(["embed", str(trained["run"]), "--images", str(trained["lfw"]), "--out", str(out)]) == 0
    with np.load(out, allow_pickle=False) as saved:
        features, paths = saved["features"], saved["paths"]
        assert saved["identities"][saved["labels"]][0] == "Aa_A"
    assert features.shape == (24, 128) and features.dtype == np.float32 and len(paths) == 24
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1, rtol=1e-6)
    run = amnp.load_run(trained["run"])
    images = np.stack([np.asarray(Image.open(p)).transpose(2, 0, 1) for p in paths[:2]])
    expected = l2_normalize_forward(embed(run.net, images, mirror=True))[0]
    np.testing.assert_allclose(features[:2], expected, rtol=1e-5, atol=1e-6)

    capsys.readouterr()
    assert cli.main(["verify", str(trained["run"]), paths[0], paths[1]]) == 0
    line = capsys.readouterr().out
    cosine = float(line.split()[1].rstrip(","))
    threshold = json.loads((trained["run"] / "eval.json").read_text())["threshold"]
    assert cosine == pytest.approx(float(features[0] @ features[1]), abs=1e-4)
    assert line.strip().endswith("same identity" if cosine >= threshold else "different identities")


def test_embed_on_threads_gives_the_features_of_one_thread(trained, tmp_path, capsys):
    saved = {}
    for threads in ("1", "3"):  # 24 images in batches of 256: parts of 8 images, each mirrored too
        out = tmp_path / f"features-{threads}.npz"
        assert cli.main(["embed", str(trained["run"]), "--images", str(trained["lfw"]), "--out", str(out),
                         "--threads", threads]) == 0
        with np.load(out, allow_pickle=False) as archive:
            saved[threads] = archive["features"]
    np.testing.assert_allclose(saved["3"], saved["1"], rtol=1e-5, atol=1e-6)
    assert cli.main(["embed", str(trained["run"]), "--images", str(trained["lfw"]), "--threads", "0"]) == 1
    assert "threads must be a positive integer, got 0" in capsys.readouterr().err


def test_eval_on_threads_gives_the_metrics_of_one_thread(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    scores = {}
    for threads in ("1", "2"):
        out = tmp_path / f"lfw-{threads}.json"
        assert cli.main(["eval", str(run), "--pairs", str(trained["pairs"]), "--images", str(trained["lfw"]),
                         "--out", str(out), "--threads", threads]) == 0
        scores[threads] = json.loads(out.read_text())
    # the threshold is a pair score: the same up to float32 rounding, not to the digit
    assert scores["2"]["threshold"] == pytest.approx(scores["1"]["threshold"], rel=1e-4, abs=1e-5)
    # the run's own held-out evaluation takes the option too (and only it, of the image options)
    assert cli.main(["eval", str(run), "--threads", "2"]) == 0
    assert json.loads((run / "eval.json").read_text())["threshold"] == pytest.approx(
        json.loads((trained["run"] / "eval.json").read_text())["threshold"], rel=1e-4, abs=1e-5)


def test_every_image_command_hands_its_threads_to_the_embedding_pass(trained, tmp_path, monkeypatch):
    """The comparisons above would also pass if --threads were ignored."""
    asked = []

    class RecordingThreads(amnp.parallel.BatchThreads):
        def __init__(self, threads):
            asked.append(threads)
            super().__init__(threads)

    monkeypatch.setattr(amnp.inference, "BatchThreads", RecordingThreads)
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    images = sorted(str(path) for path in trained["lfw"].rglob("*.jpg"))[:2]
    commands = {"embed": ["embed", str(run), "--images", str(trained["lfw"]), "--out", str(tmp_path / "f.npz")],
                "verify": ["verify", str(run), *images],
                "eval with pairs": ["eval", str(run), "--pairs", str(trained["pairs"]), "--images", str(trained["lfw"]),
                                    "--out", str(tmp_path / "lfw.json")],
                "eval of the run": ["eval", str(run)]}
    for name, arguments in commands.items():
        asked.clear()
        assert cli.main([*arguments, "--threads", "3"]) == 0, name
        assert asked and set(asked) == {3}, name


def mismatched_tree(base):
    root = base / "other"
    if not root.exists():
        write_tree(root, ["Aa_A", "Bb_B"], 2, size=20, lfw_names=True)
    return root


@pytest.mark.parametrize("arguments, message", [
    (["eval", "{run}", "--pairs", "{pairs}"], "--pairs PAIRS_TXT and --images ROOT go together"),
    (["eval", "{run}", "--pairs", "{pairs}", "--images", "{lfw}", "--grayscale"],
     "1x16x16 (CxHxW) images but the network of {run} takes 3x16x16; leave out --grayscale"),
    (["eval", "{run}", "--pairs", "{pairs}", "--images", "{lfw}", "--image-size", "20,20"],
     "pass --image-size 16,16"),
    (["eval", "{run}", "--pairs", "{pairs}", "--images", "{lfw}", "--image-size", "16x16"],
     "--image-size takes two integers H,W"),
    (["eval", "{run}", "--out", "{base}/x.json"], "--out apply only with --pairs and --images"),
    (["eval", "{run}", "--pairs", "{base}/repeated.txt", "--images", "{lfw}"], "line 3: repeats the pair of line 2"),
    (["eval", "{base}/faces"], "is not a run directory"),
    (["embed", "{run}", "--images", "{base}/nowhere"], "does not exist"),
    (["embed", "{run}", "--images", "{other}"], "20x20 (CxHxW) images but the network"),
    (["verify", "{run}", "{lfw}/Aa_A/Aa_A_0001.jpg", "{base}/nothing.png"], "cannot read image"),
    (["verify", "{run}", "{lfw}/Aa_A/Aa_A_0001.jpg", "{pairs}"], "cannot read image"),
    (["verify", "{run}", "{lfw}/Aa_A/Aa_A_0001.jpg", "{lfw}/Bb_B/Bb_B_0001.jpg", "--no-mirror"],
     "chosen on features with mirror fusion; drop --no-mirror"),
    (["verify", "{run}", "{lfw}/Aa_A/Aa_A_0001.jpg", "{other}/Aa_A/Aa_A_0001.jpg"], "pass --image-size 16,16"),
    (["train", "--resume", "{run}", "--iters", "3", "--lr", "1", "--no-eval"],
     "so --iters, --lr cannot apply; on resume only --backend, --threads, --stop-at, --no-eval, --distributed and "
     "--sharded-head do"),
    (["train", "--resume", "{run}", "--m", "0.2", "--no-feature-normalization", "--margins", "1,0,0"],
     "so --m, --margins, --no-feature-normalization cannot apply"),
    (["train", "--resume", "{run}", "--lr", "0.1", "--loss", "am-softmax", "--seed=0"],
     "so --loss, --lr, --seed cannot apply"),  # given at their default values: still refused
])
def test_errors_are_one_line_and_write_nothing(trained, capsys, arguments, message):
    base = trained["base"]
    (base / "repeated.txt").write_text("1 2\nAa_A 1 2\nAa_A 2 1\nAa_A 1 Bb_B 1\nBb_B 1 Cc_C 1\n")
    places = {"run": trained["run"], "pairs": trained["pairs"], "lfw": trained["lfw"], "base": base,
              "other": mismatched_tree(base)}
    before = files_under(base)
    checkpoint_bytes = (trained["run"] / "checkpoint.npz").read_bytes()
    assert cli.main([a.format(**places) for a in arguments]) == cli.EXIT_BAD_INPUT
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("amnp: error: "), captured.err
    assert message.format(**places) in lines[0]
    assert captured.out == ""
    assert files_under(base) == before
    assert (trained["run"] / "checkpoint.npz").read_bytes() == checkpoint_bytes


def test_verify_needs_the_threshold_of_an_evaluated_run(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    (run / "eval.json").unlink()
    image = str(trained["lfw"] / "Aa_A" / "Aa_A_0001.jpg")
    assert cli.main(["verify", str(run), image, image]) == cli.EXIT_BAD_INPUT
    assert f"run `amnp eval {run}` first" in capsys.readouterr().err


def rewrite_checkpoint(run, change):
    """Rewrite the checkpoint of ``run`` with ``change`` applied to its network's parameters
    ({name: array} in place), as a damaged or hand-edited file would hold them."""
    params, velocity, meta = checkpoint.read(run / "checkpoint.npz")
    change({name: value for name, value in params.items() if name.startswith("net.")})
    arrays = {f"param/{name}": value for name, value in params.items()}
    arrays.update({f"velocity/{name}": value for name, value in velocity.items()})
    np.savez(run / "checkpoint.npz", meta=np.array(json.dumps(meta)), **arrays)


def first_weight_nan(params):
    params[sorted(params)[0]][...] = np.nan


def overflowing(params):
    for value in params.values():
        value *= 1e12


@pytest.mark.parametrize("eval_json, change, message", [
    (None, first_weight_nan, "checkpoint.npz: parameter net.{first} contains NaN or Inf; the network cannot be used"),
    (None, overflowing, "gives NaN or Inf features for 2 of the 2 images (its activations overflow float32)"),
    ('{"threshold": NaN, "mirror_fused": true}', None, "the threshold nan is not a finite number"),
    ('{"threshold": -Infinity, "mirror_fused": true}', None, "the threshold -inf is not a finite number"),
    ('{"threshold": "0.5", "mirror_fused": true}', None, "the threshold '0.5' is not a finite number"),
    ('{"threshold": true, "mirror_fused": true}', None, "the threshold True is not a finite number"),
    ('{"threshold": 0.5, "mirror_fused": tru', None, "eval.json is not valid JSON (Expecting value: line 1"),
    ('[0.5]', None, "eval.json holds no decision threshold; run `amnp eval {run}` to rewrite it"),
])
def test_verify_refuses_a_run_that_cannot_decide(trained, tmp_path, capsys, eval_json, change, message):
    """A NaN cosine or threshold would print "different identities" for any two images."""
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    if eval_json is not None:
        (run / "eval.json").write_text(eval_json)
    if change is not None:
        rewrite_checkpoint(run, change)
    image = str(trained["lfw"] / "Aa_A" / "Aa_A_0001.jpg")
    assert cli.main(["verify", str(run), image, image]) == cli.EXIT_BAD_INPUT
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    first = sorted(amnp.load_run(trained["run"]).net.state_dict())[0]
    assert len(lines) == 1 and message.format(run=run, first=first) in lines[0], captured.err
    assert captured.out == ""


def test_eval_and_embed_refuse_a_nan_parameter(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run, ignore=shutil.ignore_patterns("eval-*.json", "embeddings-*"))
    rewrite_checkpoint(run, first_weight_nan)
    for arguments in (["eval", str(run), "--pairs", str(trained["pairs"]), "--images", str(trained["lfw"])],
                      ["embed", str(run), "--images", str(trained["lfw"]), "--out", str(tmp_path / "f.npz")]):
        assert cli.main(arguments) == cli.EXIT_BAD_INPUT
        assert "contains NaN or Inf; the network cannot be used" in capsys.readouterr().err
    assert not (tmp_path / "f.npz").exists() and not (run / "eval-lfw.json").exists()


def test_every_command_names_the_run_whose_features_overflow(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run, ignore=shutil.ignore_patterns("eval-*.json", "embeddings-*"))
    rewrite_checkpoint(run, overflowing)
    for arguments in (["eval", str(run), "--images", str(trained["lfw"]), "--all-pairs"],
                      ["embed", str(run), "--images", str(trained["lfw"]), "--out", str(tmp_path / "f.npz")]):
        assert cli.main(arguments) == cli.EXIT_BAD_INPUT
        line, = capsys.readouterr().err.strip().splitlines()
        assert f"the network of {run} gives NaN or Inf features for" in line, line
    assert not list(run.glob("eval-all-pairs-*.json"))


def test_resume_refuses_options_added_later():
    """What is refused is read from the command line, not from a list of options to keep up to date."""
    argv = ["train", "--resume", "r", "--some-future-option", "3", "--stop-at=9", "--no-eval"]
    assert cli.options_written(argv, cli.RESUME_OPTIONS) == ["--some-future-option"]


def test_train_image_options_for_folders(tmp_path, capsys):
    faces = write_tree(tmp_path / "faces", [f"p{i}" for i in range(6)], 4, size=12)
    write_tree(tmp_path / "faces", ["p6"], 4, size=14)
    out = tmp_path / "run"
    assert cli.main(["train", "--dataset", f"folder:{faces}", "--out", str(out)]) == cli.EXIT_BAD_INPUT
    assert "resize them with image_size=(H, W) (amnp: --image-size H,W)" in capsys.readouterr().err
    assert cli.main(["train", "--dataset", f"folder:{faces}", "--image-size", "10,8", "--grayscale",
                     "--iters", "1", "--batch-size", "4", "--out", str(out), "--no-eval"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["image_size"] == [10, 8] and config["grayscale"] is True
    assert amnp.load_run(out).image_shape == (1, 10, 8)
    assert cli.main(["train", "--grayscale", "--out", str(tmp_path / "glyphs")]) == cli.EXIT_BAD_INPUT
    assert "apply to folder datasets only" in capsys.readouterr().err


def test_a_folder_with_too_few_identities_is_refused(tmp_path, capsys):
    faces = write_tree(tmp_path / "faces", ["a", "b", "c"], 4, size=8)
    out = tmp_path / "run"
    assert cli.main(["train", "--dataset", f"folder:{faces}", "--out", str(out)]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "has 3 identities; a folder dataset needs at least 4: 2 held out" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_unreadable_images_are_one_plain_line(tmp_path, capsys):
    faces = write_tree(tmp_path / "faces", [f"p{i}" for i in range(6)], 4, size=8)
    (faces / "p0" / "broken.png").write_bytes(b"\x89PNG not really")
    (faces / "p1" / "broken.png").write_bytes(b"\x89PNG not really")
    assert cli.main(["train", "--dataset", f"folder:{faces}", "--iters", "1", "--batch-size", "4",
                     "--out", str(tmp_path / "run"), "--no-eval"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "unreadable" in line]
    assert warnings == [f"amnp: warning: skipped 2 unreadable image file(s) under {faces}, "
                        f"e.g. {faces / 'p0' / 'broken.png'}"]


def test_runs_saved_before_the_input_shape_was_recorded(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    with np.load(run / "checkpoint.npz", allow_pickle=False) as archive:
        contents = {key: archive[key] for key in archive.files}
    meta = json.loads(str(contents["meta"]))
    del meta["image_shape"], meta["mirror"]
    contents["meta"] = np.array(json.dumps(meta))
    np.savez(run / "checkpoint.npz", **contents)
    with pytest.raises(checkpoint.CheckpointError, match="does not record the image size"):
        amnp.load_run(run)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(dict(config, dataset="glyphs")))
    # glyphs have one input, 1x32x32: this network (3x16x16) is then not the checkpoint's
    with pytest.raises(checkpoint.CheckpointError, match="does not fit this network: 0.weight has shape"):
        amnp.load_run(run)


def test_a_run_stopped_before_its_first_checkpoint_says_how_to_go_on(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    (run / "checkpoint.npz").unlink()
    with pytest.raises(amnp.checkpoint.CheckpointError, match=f"{run} has no checkpoint yet: .*"
                       f"`amnp train --resume {run}` trains it"):
        amnp.load_run(run)
    assert cli.main(["embed", str(run), "--images", str(trained["lfw"])]) == cli.EXIT_BAD_INPUT
    assert f"{run} has no checkpoint yet" in capsys.readouterr().err
