"""Contract every registered variant must satisfy (one base class, subclassed per variant)."""

import pytest
import torch

from medseg_mem.core.config import ModelConfig
from medseg_mem.core.errors import MedsegError
from medseg_mem.inference import cut_slab
from medseg_mem.models.unet import UNet3D
from medseg_mem.variants import REGISTRY, TrainedVariant, get_variant, resolve_variants

K = 3
MODEL = ModelConfig(channels=(2, 4, 8), slab_size=8, downsample=0.5)


def networks(variant, model=MODEL, image_channels=1):
    return {
        stage.name: UNet3D(stage.in_channels(image_channels, K, model), K, model.channels).eval()
        for stage in variant.stages()
    }


def sample(size=(10, 12, 21), channels=1):
    torch.manual_seed(0)
    label = torch.randint(0, K, (1, 1, *size))
    return torch.randn(1, channels, *size), label


class VariantContract:
    name = ""

    def variant(self):
        return get_variant(self.name)

    def test_registered_under_its_name(self):
        assert REGISTRY[self.name]().name == self.name

    def test_stage_names_are_unique(self):
        names = [s.name for s in self.variant().stages()]
        assert len(names) == len(set(names)) > 0

    @pytest.mark.parametrize("size", [(10, 12, 21), (7, 9, 8), (16, 16, 33)])
    def test_segment_returns_uint8_labels_of_input_size(self, size):
        variant = self.variant()
        image, _ = sample(size)
        nets = networks(variant)
        with torch.inference_mode():
            run = TrainedVariant(variant, nets, MODEL, K)
            out, probabilities = run.segment(image), run.probabilities(image)
        assert out.shape == (1, 1, *size) and out.dtype == torch.uint8
        assert torch.equal(out.long(), probabilities.argmax(dim=1, keepdim=True))
        assert torch.allclose(probabilities.sum(dim=1), torch.ones(1, *size), atol=1e-5)

    def test_stage_inputs_match_each_network(self):
        variant = self.variant()
        image, label = sample()
        nets = networks(variant)
        for stage in variant.stages():
            x, y = stage.inputs(image, label, MODEL, K)
            assert x.shape[1] == stage.in_channels(1, K, MODEL)
            assert x.shape[2:] == y.shape[2:] and y.dtype == torch.long
            with torch.inference_mode():
                assert stage.forward(nets[stage.name], x, MODEL).shape == (1, K, *x.shape[2:])

    def test_validation_gives_the_labels_of_the_whole_stage_input(self):
        variant = self.variant()
        image, label = sample()
        nets = networks(variant)
        for stage in variant.stages():
            whole, _ = stage.inputs(image, label, MODEL, K)
            lazy, y = stage.validation_input(image, label, MODEL, K)
            with torch.inference_mode():
                expected = stage.forward(nets[stage.name], whole, MODEL).argmax(dim=1, keepdim=True)
                labels = stage.labels(nets[stage.name], lazy, MODEL, device="cpu")
            assert torch.equal(labels.long(), expected) and y.shape[2:] == labels.shape[2:]

    def test_multichannel_images(self):
        variant = self.variant()
        image, _ = sample(channels=4)
        with torch.inference_mode():
            run = TrainedVariant(variant, networks(variant, image_channels=4), MODEL, K)
            out, labels = run.probabilities(image), run.segment(image)
        assert out.shape[1] == K and labels.shape == (1, 1, *image.shape[2:])


class TestFull(VariantContract):
    name = "full"


class TestPatch(VariantContract):
    name = "patch"

    def test_slab_stage_includes_background_in_loss(self):
        assert self.variant().stages()[0].include_background and self.variant().stages()[0].slab


class TestCascade(VariantContract):
    name = "cascade"

    def test_stage1_runs_at_reduced_resolution(self):
        stage1, stage2 = self.variant().stages()
        image, label = sample((10, 12, 20))
        x, y = stage1.inputs(image, label, MODEL, K)
        assert x.shape[2:] == (5, 6, 10)
        assert stage2.slab and stage2.guided and not stage1.slab

    @pytest.mark.parametrize("guidance, extra", [("label", 1), ("onehot", K - 1)])
    def test_stage2_input_is_image_plus_guidance(self, guidance, extra):
        model = ModelConfig(channels=(2, 4), slab_size=8, downsample=0.5, guidance=guidance)
        _, stage2 = self.variant().stages()
        image, label = sample()
        x, _ = stage2.inputs(image, label, model, K)
        assert x.shape == (1, 1 + extra, *image.shape[2:])
        assert torch.equal(x[:, :1], image)
        with torch.inference_mode():
            out = TrainedVariant(self.variant(), networks(self.variant(), model), model, K).segment(image)
        assert out.shape == (1, 1, *image.shape[2:])


@pytest.mark.parametrize("guidance", ["label", "onehot"])
def test_a_guided_stage_is_validated_slab_by_slab_on_the_very_input_of_the_whole_volume(guidance):
    model = ModelConfig(channels=(2, 4), slab_size=8, downsample=0.5, guidance=guidance)
    stage2 = get_variant("cascade").stages()[1]
    image, label = sample((10, 12, 21))
    whole, _ = stage2.inputs(image, label, model, K)
    lazy, _ = stage2.validation_input(image, label, model, K)
    assert lazy.shape == tuple(whole.shape)
    for start in (0, 8, 16):  # the last slab is zero-padded, as cut_slab pads the whole volume's
        assert torch.equal(lazy.cut(start, 8, -1), cut_slab(whole, start, 8, -1))


def test_unknown_variant_suggests_the_nearest_name():
    with pytest.raises(MedsegError, match="did you mean 'patch'.*full, patch, cascade"):
        get_variant("pach")


def test_all_expands_in_registry_order():
    assert resolve_variants(["all"]) == ["full", "patch", "cascade"]
    assert resolve_variants(["cascade", "full"]) == ["cascade", "full"]


def test_a_trained_variant_builds_its_slab_inferers_once(monkeypatch):
    import medseg_mem.variants.base as base_module

    built = []
    slab_inferer = base_module.SlabInferer
    def counted(**settings):
        built.append(settings.get("output", "logits"))
        return slab_inferer(**settings)

    monkeypatch.setattr(base_module, "SlabInferer", counted)
    variant = get_variant("cascade")
    run = TrainedVariant(variant, networks(variant), MODEL, K)
    image, _ = sample()
    with torch.inference_mode():
        first, second, probabilities = run.segment(image), run.segment(image), run.probabilities(image)
    assert built == ["logits", "labels"]  # stage 2's two, made with the object; stage 1 is whole-volume
    assert torch.equal(first, second) and torch.equal(first.long(), probabilities.argmax(dim=1, keepdim=True))


def test_a_trained_variant_without_a_stages_network_names_it():
    variant = get_variant("cascade")
    with pytest.raises(MedsegError, match="stage2"):
        TrainedVariant(variant, {"stage1": networks(variant)["stage1"]}, MODEL, K)
