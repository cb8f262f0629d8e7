"""The registries: a data backend, a backbone and a loss are each one function plus one entry.

An extra backend and an extra loss are registered here, in the test, and used through the same
entry points pretraining uses (config, build_loader / build_eval_loader, TrainStep); a non-ResNet
torchvision backbone pretrains a few steps on CPU, fed by the extra backend.
"""

import copy

import pytest
import torch
import torchvision

from fastbt import config, runlog
from fastbt.errors import ConfigError
from fastbt.train import loop, losses, model
from fastbt.train.model import ARCHS, build_backbone, build_model, feature_width
from fastbt.train.step import TrainStep
import pipelines
from pipelines.augment import AugSpec
from pipelines.loader import NormalizedBatches, TwoViewLoader
from pipelines.order import batch_seed, rank_range

IMAGES, CLASSES, SIZE = 24, 3, 32


# ---- an extra data backend: random images made on the fly, defined here and registered ---------

class RandomCrops:
    """A CropSource (pipelines.loader) of random uint8 crops, seeded per (seed, rank, epoch, batch)."""

    def __init__(self, path, *, aug, batch_size, device, rank, world_size, seed, workers):
        self.dataset_size, self.num_classes = IMAGES, CLASSES
        self.size, self.batch_size, self.device = aug.size, batch_size, torch.device(device)
        self.rank, self.world_size, self.seed, self.epoch, self.skip = rank, world_size, seed, 0, 0

    def __len__(self):
        return (self.dataset_size // self.world_size) // self.batch_size

    def set_epoch(self, epoch, skip=0):
        self.epoch, self.skip = epoch, skip

    def __iter__(self):
        for i in range(self.skip, len(self)):
            g = torch.Generator().manual_seed(batch_seed(self.seed, self.rank, self.epoch, i))
            crops = torch.randint(0, 256, (2, self.batch_size, 3, self.size, self.size), generator=g,
                                  dtype=torch.uint8)
            labels = torch.zeros(self.batch_size, dtype=torch.long)
            yield crops[0].to(self.device), crops[1].to(self.device), labels


def random_center_crops(path, *, size, resize, mean, std, batch_size, device, rank, world_size, workers):
    share = rank_range(IMAGES, rank, world_size)
    labels = torch.arange(IMAGES) % CLASSES
    images = torch.randint(0, 256, (IMAGES, 3, size, size), generator=torch.Generator().manual_seed(0),
                           dtype=torch.uint8)
    batches = [(images[i:i + batch_size], labels[i:i + batch_size])
               for i in range(share.start, share.stop, batch_size)]
    return NormalizedBatches(batches, mean, std)


@pytest.fixture
def random_backend():
    pipelines.register("random", pipelines.Backend(crops=RandomCrops, eval_crops=random_center_crops))
    yield "random"
    del pipelines.BACKENDS["random"]


def test_a_registered_backend_is_what_build_loader_and_build_eval_loader_use(random_backend):
    aug = AugSpec(size=SIZE)
    loader = pipelines.build_loader(random_backend, "", aug=aug, batch_size=4, device="cpu", workers=0,
                                    rank=1, world_size=2)
    assert isinstance(loader, TwoViewLoader) and isinstance(loader.crops, RandomCrops)
    assert len(loader) == 3 and loader.dataset_size == IMAGES
    batches = list(loader)
    assert len(batches) == 3
    view1, view2 = batches[0]
    assert view1.shape == view2.shape == (4, 3, SIZE, SIZE) and view1.dtype == torch.float32

    eval_batches = pipelines.build_eval_loader(random_backend, "", size=SIZE, resize=SIZE, mean=aug.mean,
                                               std=aug.std, batch_size=5, device="cpu", workers=0,
                                               rank=1, world_size=2)
    labels = torch.cat([y for _, y in eval_batches])
    assert labels.tolist() == [i % CLASSES for i in rank_range(IMAGES, 1, 2)]


def test_the_config_accepts_exactly_the_registered_backends(random_backend):
    assert config.load(None, [f"data.backend={random_backend}"]).data.backend == random_backend
    del pipelines.BACKENDS[random_backend]
    with pytest.raises(ConfigError, match="config key 'data.backend' expects one of 'ffcv', 'dali', "
                                          "'torchvision', got 'random'"):
        config.load(None, [f"data.backend={random_backend}"])
    pipelines.register(random_backend, pipelines.Backend(RandomCrops, random_center_crops))  # for teardown


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="unknown data backend 'pil'; choose one of ffcv, dali, torchvision"):
        pipelines.build_loader("pil", "", aug=AugSpec(), batch_size=4, device="cpu", workers=0)


def test_format_detection_reads_manifests_and_falls_back_to_the_image_folder_backend(tmp_path):
    assert pipelines.detect_format(tmp_path) == "torchvision"
    assert [name for name, b in pipelines.BACKENDS.items() if b.converted] == ["ffcv", "dali"]


# ---- backbones by name ---------------------------------------------------------------------------

ONE_OUTPUT = {arch: {"aux_logits": False, "init_weights": True} for arch in ("googlenet", "inception_v3")}


@pytest.mark.parametrize("arch, size", [
    ("resnet50", 64), ("mobilenet_v3_small", 64), ("efficientnet_b0", 64), ("convnext_tiny", 64),
    ("regnet_x_400mf", 64), ("densenet121", 64), ("googlenet", 64), ("inception_v3", 299),
    ("vit_b_16", 224), ("swin_t", 64), ("maxvit_t", 224), ("vgg11", 64)])
def test_any_torchvision_backbone_gives_feature_vectors_of_its_width(arch, size):
    # shapes only, on the meta device (RegNet's constructor computes its widths with tensors: CPU)
    with torch.device("cpu" if arch.startswith("regnet") else "meta"):
        backbone, width = build_backbone(arch)
        classifier = torchvision.models.get_model(arch, **ONE_OUTPUT.get(arch, {}))
    with torch.device("meta"):
        features = backbone.to("meta").eval()(torch.empty(2, 3, size, size))
    assert features.shape == (2, width) and feature_width(arch) == width
    # the removed logits layer (a Linear) is the only difference from torchvision's model
    ours, theirs = backbone.state_dict(), classifier.state_dict()
    assert set(ours) <= set(theirs) and all(ours[k].shape == theirs[k].shape for k in ours)
    (removed,) = {k.rpartition(".")[0] for k in set(theirs) - set(ours)}
    assert isinstance(classifier.get_submodule(removed), torch.nn.Linear)


def test_every_listed_backbone_is_accepted_by_the_config_and_one_list_rules():
    assert {"resnet18", "resnet50", "mobilenet_v3_small", "vit_b_16"} <= set(ARCHS)
    assert "squeezenet1_0" not in ARCHS  # its classifier is a convolution: no feature vector
    assert config.load(None, ["model.arch=efficientnet_b0"]).model.arch == "efficientnet_b0"
    with pytest.raises(ConfigError, match="did you mean 'resnet50'"):
        config.load(None, ["model.arch=resnet5"])


def test_a_registered_backbone_is_one_function_and_one_entry(monkeypatch):
    def tiny_cnn():  # a classifier whose last Linear is its logits layer
        return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1),
                                   torch.nn.Flatten(), torch.nn.Linear(8, 10))
    monkeypatch.setitem(model.ARCHS, "tiny_cnn", tiny_cnn)
    assert config.load(None, ["model.arch=tiny_cnn"]).model.arch == "tiny_cnn"
    backbone, width = build_backbone("tiny_cnn")
    assert width == 8 and backbone(torch.randn(2, 3, 16, 16)).shape == (2, 8)


def test_a_non_resnet_backbone_pretrains_a_few_steps_on_cpu(random_backend, tmp_path):
    cfg = config.load(None, [
        f"data.backend={random_backend}", "data.path=generated", "data.workers=0",
        "model.arch=mobilenet_v3_small",
        "model.projector=[32,32]", f"aug.size={SIZE}", "train.batch_size=8", "train.epochs=1",
        "optim.warmup_epochs=0", "logging.every_steps=1", "logging.progress_bar=false",
        "runtime.device=cpu", "runtime.compile=false", "runtime.precision=fp32",
        f"train.out_dir={tmp_path / 'run'}"])
    run_dir = loop.pretrain(cfg)
    records = [r for r in runlog.read(run_dir / "log.jsonl") if "loss" in r]
    assert len(records) == IMAGES // 8 and all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    weights = torch.load(run_dir / "backbone.pth", weights_only=True)
    result = torchvision.models.mobilenet_v3_small().load_state_dict(weights, strict=False)
    assert sorted(result.missing_keys) == ["classifier.3.bias", "classifier.3.weight"]
    assert not result.unexpected_keys


# ---- an injected loss ----------------------------------------------------------------------------

def toy_loss(cfg):
    """A stand-in objective: views' embeddings pulled together (a new function, one LOSSES entry)."""
    def loss(z1, z2, *, scale, group):
        return cfg.scale * scale * (z1 - z2).square().mean()
    return loss


def test_an_injected_loss_is_what_the_step_backpropagates(monkeypatch):
    monkeypatch.setitem(losses.LOSSES, "toy", toy_loss)
    cfg = config.load(None, ["loss.name=toy", "loss.scale=0.5", "runtime.compile=false",
                             "runtime.precision=fp32", "runtime.channels_last=false"])
    torch.manual_seed(0)
    model = build_model("resnet18", (16, 8), channels_last=False)
    reference = copy.deepcopy(model)
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1), losses.build_loss(cfg.loss),
                     cfg.runtime, torch.device("cpu"))
    view1, view2 = torch.randn(2, 4, 3, 32, 32)

    loss = step(view1, view2)

    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)  # the same, in plain torch
    z1, z2 = reference(view1, view2)
    want = 0.5 * (z1 - z2).square().mean()
    want.backward()
    optimizer.step()
    torch.testing.assert_close(loss, want.detach())
    for got, expected in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(got, expected)


def test_the_config_accepts_exactly_the_registered_losses(monkeypatch):
    with pytest.raises(ConfigError, match="config key 'loss.name' expects one of 'barlow_twins', got 'toy'"):
        config.load(None, ["loss.name=toy"])
    monkeypatch.setitem(losses.LOSSES, "toy", toy_loss)
    assert config.load(None, ["loss.name=toy"]).loss.name == "toy"
