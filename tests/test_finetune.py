"""`fastbt eval finetune`: label subsets, the whole network trains (the linear probe's stays frozen),
resume is exact, pretrained weights help, bad input is one line (CPU, tiny generated image sets)."""

import json

import pytest
import torch
import torch.nn.functional as F

import distributed
from checks import make_colour_folder, one_error_line, whole_and_resumed
from fastbt import runlog
from fastbt.cli import main
from fastbt.errors import ConfigError
from fastbt.eval import finetune as finetune_module
from fastbt.eval import linear as linear_module
from fastbt.eval import subset
from fastbt.eval.data import center_crops, labeled_set
from fastbt.eval.weights import load_backbone
from fastbt.train import checkpoint
from fastbt.train.model import build_backbone
from pipelines.augment import AugSpec
from pipelines.convert.source import Sample, scan

# 32 px crops of the 40 px shapes, resnet18, fp32 on CPU, no loader workers.
EVAL = ["model.arch=resnet18", "eval.size=32", "eval.resize=32", "eval.batch_size=40",
        "runtime.device=cpu", "runtime.precision=fp32", "data.workers=0"]
SMALL = ["eval.size=16", "eval.resize=16"]  # a quarter of the work, where accuracy does not matter


def finetune_cli(weights, shapes, out, *overrides, flags=("--train-percent", "10")):
    return main(["eval", "finetune", "--weights", str(weights), "--train", str(shapes / "train"), "--val",
                 str(shapes / "val"), "--out", str(out), *flags, *EVAL, "eval.finetune.epochs=2",
                 "eval.finetune.batch_size=10", *overrides])


# ---- the label subsets ----------------------------------------------------------------------------

def samples_of(counts):
    """Samples of len(counts) classes, counts[c] images of class c, in scan order."""
    return tuple(Sample(f"c{c}/c{c}_{i}.JPEG", c) for c, n in enumerate(counts) for i in range(n))


def test_a_drawn_subset_keeps_the_percent_of_every_class_seeded():
    counts = [100, 100, 30, 57, 100]
    samples, classes = samples_of(counts), tuple(f"c{c}" for c in range(5))
    ten = subset.draw(samples, classes, 10, seed=0)
    assert ten.per_class == (10, 10, 3, 6, 10) and ten.size == 39 == len(ten.indices)
    assert [samples[i].label for i in ten.indices] == sorted(samples[i].label for i in ten.indices)
    assert len(set(ten.indices)) == 39
    assert subset.draw(samples_of([100, 150, 250]), classes[:3], 1, seed=0).per_class == (1, 2, 3)
    assert subset.draw(samples, classes, 10, seed=0) == ten  # the seed decides
    other = subset.draw(samples, classes, 10, seed=1)
    assert other.indices != ten.indices and other.sha256 != ten.sha256 and other.per_class == ten.per_class
    whole = subset.draw(samples, classes, 100, seed=0)
    assert whole.indices is None and whole.size == sum(counts) and whole.record()["source"] == "all"
    record = ten.record()
    assert (record["seed"], record["size"], record["per_class_min"], record["per_class_max"]) == (0, 39, 3, 10)


def test_a_percent_that_leaves_a_class_empty_or_is_unknown_is_refused():
    samples = samples_of([100, 40])
    with pytest.raises(ConfigError, match=r"--train-percent 1 leaves class 'c1' \(40 images\) with none"):
        subset.draw(samples, ("c0", "c1"), 1, seed=0)
    with pytest.raises(ConfigError, match="--train-percent 5: expected one of 1, 10, 100"):
        subset.draw(samples, ("c0", "c1"), 5, seed=0)


def test_a_simclr_list_names_images_by_file_name_and_its_class_prefix(tmp_path):
    samples = samples_of([3, 3])
    listed = tmp_path / "1percent.txt"
    listed.write_text("c0_2.JPEG\n\n  c1_0.JPEG  \nc0_2.JPEG\n")  # blank lines, spaces, a repeat
    assert subset.read_list(listed) == ["c0/c0_2.JPEG", "c1/c1_0.JPEG", "c0/c0_2.JPEG"]
    chosen = subset.from_list(samples, 2, listed, "train")
    assert chosen.indices == (2, 3) and chosen.per_class == (1, 1) and chosen.record()["file"] == str(listed)
    listed.write_text("c0_2.JPEG\nc1_7.JPEG\nc2_0.JPEG\nc0_9.JPEG\nc0_8.JPEG\n")
    with pytest.raises(ConfigError, match=r"4 of its 5 images are not in the train set train "
                                          r"\(c1/c1_7.JPEG, c2/c2_0.JPEG, c0/c0_9.JPEG ...\)"):
        subset.from_list(samples, 2, listed, "train")
    listed.write_text("c0_2.JPEG\nnotes about it\n")
    with pytest.raises(ConfigError, match="the line 'notes about it' is not an image file name"):
        subset.read_list(listed)


# ---- the command ------------------------------------------------------------------------------------

def keep_backbone(module, monkeypatch):
    """The backbone object `module` loads, kept for the test to look at after the run."""
    kept = []
    real = module.load_backbone

    def load(path, arch):
        backbone, width = real(path, arch)
        kept.append(backbone)
        return backbone, width
    monkeypatch.setattr(module, "load_backbone", load)
    return kept


def changed(state, reference):
    return sorted(k for k in reference if not torch.equal(state[k], reference[k]))


def test_finetuning_moves_the_backbone_and_the_linear_probe_keeps_it_frozen(random_weights, shapes, tmp_path,
                                                                            monkeypatch):
    start = torch.load(random_weights, weights_only=True)
    tuned = keep_backbone(finetune_module, monkeypatch)
    assert finetune_cli(random_weights, shapes, tmp_path / "ft", *SMALL, "eval.finetune.epochs=1") == 0
    moved = changed(tuned[0].state_dict(), start)
    assert "conv1.weight" in moved and "layer4.1.bn2.weight" in moved
    assert "bn1.running_mean" in moved  # BatchNorm trained in train mode
    saved = checkpoint.load_latest(tmp_path / "ft")["model"]
    assert changed({k[2:]: v for k, v in saved.items() if k.startswith("0.")}, start) == moved

    probed = keep_backbone(linear_module, monkeypatch)
    assert main(["eval", "linear", "--weights", str(random_weights), "--train", str(shapes / "train"), "--val",
                 str(shapes / "val"), "--out", str(tmp_path / "lin"), *EVAL, *SMALL, "eval.linear.epochs=1",
                 "eval.linear.batch_size=16"]) == 0
    assert changed(probed[0].state_dict(), start) == []  # weights and BatchNorm statistics alike


def test_the_result_and_log_say_what_was_trained_on(random_weights, shapes, tmp_path):
    assert finetune_cli(random_weights, shapes, tmp_path / "ft", *SMALL) == 0
    result = json.loads((tmp_path / "ft.json").read_text())
    assert result["num_labeled"] == 10 and result["num_train"] == 80 and result["num_val"] == 40
    assert result["subset"]["per_class"] == [1] * 10 and result["subset"]["seed"] == 0
    records = runlog.read(tmp_path / "ft" / "log.jsonl")
    assert [r["epoch"] for r in records] == [1, 2] and all(r["train_images"] == 10 for r in records)
    assert records[0]["lr_backbone"] == 0.002 and records[0]["lr_classifier"] == 0.5
    assert records[1]["lr_backbone"] == pytest.approx(0.001)  # cosine over 2 epochs, per epoch
    assert result["top1"] == records[1]["top1"] and result["best_top1"] == max(r["top1"] for r in records)


def test_a_resumed_finetuning_equals_the_uninterrupted_one(random_weights, shapes, tmp_path, monkeypatch):
    log = whole_and_resumed(lambda out: finetune_cli(random_weights, shapes, out, *SMALL), finetune_module,
                            tmp_path, monkeypatch, "model")  # weights, BatchNorm statistics, momentum
    assert [r["epoch"] for r in log] == [1, 2]


def test_a_directory_it_did_not_write_or_other_settings_are_refused(random_weights, shapes, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert finetune_cli(random_weights, shapes, mine, *SMALL) == 2
    assert "holds files no fine-tuning wrote (notes.txt)" in one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    assert finetune_cli(random_weights, shapes, tmp_path / "ft", *SMALL, "eval.finetune.epochs=1") == 0
    capsys.readouterr()
    assert finetune_cli(random_weights, shapes, tmp_path / "ft", *SMALL, "eval.finetune.epochs=1",
                        flags=("--train-percent", "100")) == 2
    assert "holds a fine-tuning with other settings (subset_sha256" in one_error_line(capsys.readouterr().err)


def test_a_result_file_it_did_not_write_is_not_replaced(random_weights, shapes, tmp_path, capsys):
    (tmp_path / "ft.json").write_text("mine")
    assert finetune_cli(random_weights, shapes, tmp_path / "ft", *SMALL) == 2
    assert "ft.json exists, and no fine-tuning in" in one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ft.json"] and (tmp_path / "ft.json").read_text() == "mine"


@pytest.mark.parametrize("flags, overrides, says", [
    (("--train-percent", "1"), (), "--train-percent 1 leaves class 'checker' (8 images) with none"),
    (("--train-percent", "50"), (), "--train-percent 50: expected one of 1, 10, 100"),
    (("--train-percent", "ten"), (), "--train-percent 'ten': expected 1, 10 or 100"),
    (("--train-percent", "10"), ("eval.finetune.batch_size=16",),
     "eval.finetune.batch_size 16 is more than the 10 images of the labeled subset (drawn) of"),
    (("--subset", "LIST"), (), "2 of its 3 images are not in the train set"),
])
def test_bad_input_is_one_line_and_writes_nothing(flags, overrides, says, random_weights, shapes, tmp_path,
                                                   capsys):
    listed = tmp_path / "list.txt"
    first = scan(shapes / "train").samples[0].path.split("/")[1]
    listed.write_text(f"{first}\nn01440764_10026.JPEG\nn01440764_10027.JPEG\n")
    flags = tuple(str(listed) if f == "LIST" else f for f in flags)
    assert finetune_cli(random_weights, shapes, tmp_path / "out", *overrides, flags=flags) == 2
    assert says in one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["list.txt"]


# ---- several processes ------------------------------------------------------------------------------

def finetune_rank(rank, world_size, weights, shapes, out):
    """One process of a 2-process fine-tuning: its trained model's state."""
    kept = []
    real = finetune_module.load_backbone
    finetune_module.load_backbone = lambda path, arch: kept.append(real(path, arch)) or kept[-1]
    assert finetune_cli(weights, shapes, out, *SMALL, "eval.finetune.epochs=1") == 0
    return {k: v.clone() for k, v in kept[0][0].state_dict().items()}


@pytest.mark.dist
def test_two_processes_train_one_model_and_score_it_as_one_process_would(random_weights, shapes, tmp_path):
    states = distributed.run(finetune_rank, 2, random_weights, shapes, tmp_path / "ft")
    for key in states[0]:  # DDP: one model (BatchNorm statistics: the first process's, as scored)
        torch.testing.assert_close(states[1][key], states[0][key], rtol=0, atol=0)
    [record] = runlog.read(tmp_path / "ft" / "log.jsonl")
    assert record["train_images"] == 10  # each process 5 of the 10 labeled images, batch 10 split in two
    result = json.loads((tmp_path / "ft.json").read_text())
    assert result["processes"] == 2 and result["top1"] == record["top1"]

    saved = checkpoint.load_latest(tmp_path / "ft")["model"]
    backbone, width = load_backbone(random_weights, "resnet18")
    model = torch.nn.Sequential(backbone, torch.nn.Linear(width, 10))
    model.load_state_dict(saved)
    val = labeled_set(shapes / "val")
    images, labels = next(iter(center_crops(val, size=16, resize=16, aug=AugSpec(), batch_size=40, device="cpu",
                                            workers=0)))
    with torch.no_grad():
        logits = model.eval()(images)
    top1 = 100.0 * (logits.argmax(1) == labels).float().mean().item()
    top5 = 100.0 * (logits.topk(5).indices == labels[:, None]).any(1).float().mean().item()
    assert (record["top1"], record["top5"]) == pytest.approx((top1, top5))


# ---- pretrained weights help -----------------------------------------------------------------------

# ShuffleNet: a step of batch 80 at 32 px took 0.23 s here against ResNet-18's 1.8 s.
SMALL_ARCH = "shufflenet_v2_x0_5"


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    """Ten colour classes (checks.make_colour_folder): 80 train images, 40 val images."""
    root = tmp_path_factory.mktemp("colours")
    make_colour_folder(root / "train", per_class=8, seed=0)
    make_colour_folder(root / "val", per_class=4, seed=1)
    return root


def pretrained_backbone(data, path, steps=15):
    """Weights pretrained on all 80 labeled train images (center crops), BatchNorm statistics
    those of the whole set: what fine-tuning on 10% of the labels starts from (the val images
    are never seen). Random init saved beside, for comparison."""
    torch.manual_seed(0)
    backbone, width = build_backbone(SMALL_ARCH)
    torch.save(backbone.state_dict(), path.with_name("random.pth"))
    head = torch.nn.Linear(width, 10)
    train = labeled_set(data / "train")
    batches = center_crops(train, size=32, resize=32, aug=AugSpec(), batch_size=80, device="cpu", workers=0)
    images, labels = next(iter(batches))
    optimizer = torch.optim.Adam([*backbone.parameters(), *head.parameters()], lr=3e-3)
    for _ in range(steps):
        loss = F.cross_entropy(head(backbone(images)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for module in backbone.modules():  # running statistics of the final weights, not a lagging average
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    with torch.no_grad():
        backbone(images)
    torch.save(backbone.state_dict(), path)
    return path


def test_pretrained_weights_beat_random_init_on_ten_percent_of_the_labels(colours, tmp_path):
    pretrained = pretrained_backbone(colours, tmp_path / "pretrained.pth")
    scores = {}
    for name in ("pretrained", "random"):
        # the classifier's lr 0.5 is ImageNet's (batch 256); on 10 images it diverges either way
        assert finetune_cli(pretrained.with_name(f"{name}.pth"), colours, tmp_path / name,
                            f"model.arch={SMALL_ARCH}", "eval.finetune.epochs=3",
                            "eval.finetune.lr_classifier=0.05") == 0
        scores[name] = json.loads((tmp_path / f"{name}.json").read_text())["top1"]
    assert scores["pretrained"] >= scores["random"] + 25, scores  # measured: 47.5-50 against 10, 3 seeds
