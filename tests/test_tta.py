"""Multi-scale + flip test-time augmentation: inputs, flip-back, averaging, and agreement with the plain
model at a single scale."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rankseg_fast.modeling.test_time_augmentation import SemanticTTA, build_tta
from rankseg_fast.config import load_recipe
from rankseg_fast.testing.model import tiny_mask_former


class RecordingModel:
    """A stand-in model: class 0 is the image's red channel resized to the output size (so it is flip
    equivariant), class 1 the short side of the input it was given (so averaging over sizes shows)."""

    def __init__(self):
        self.calls = []

    def inference(self, images, output_sizes, gt_classes=None):
        self.calls.append([tuple(image.shape) for image in images])
        results = []
        for image, size in zip(images, output_sizes):
            red = F.interpolate(image[None, :1].float(), size=size, mode="bilinear", align_corners=False)[0, 0]
            results.append({"sem_seg": torch.stack([red, torch.full(size, float(min(image.shape[1:])))])})
        return results


def asymmetric_image(height=30, width=40):
    x = torch.arange(width, dtype=torch.float32).expand(height, width)
    return torch.stack([x * 6, x.flip(-1) * 3, torch.zeros(height, width)]).to(torch.uint8)


def test_inputs_are_each_size_then_its_flip():
    model = RecordingModel()
    SemanticTTA(model, [20, 45], max_size=50, flip=True)(asymmetric_image(), (60, 80))
    # Short side 20 -> 20x27; short side 45 would give 45x60, capped by max_size 50 -> 38x50.
    assert model.calls == [[(3, 20, 27), (3, 20, 27)], [(3, 38, 50), (3, 38, 50)]]


def test_flipped_predictions_are_flipped_back_and_averaged():
    image = asymmetric_image()
    with_flip = SemanticTTA(RecordingModel(), [30, 45], max_size=100, flip=True)(image, (60, 80))["sem_seg"]
    without = SemanticTTA(RecordingModel(), [30, 45], max_size=100, flip=False)(image, (60, 80))["sem_seg"]
    # The stand-in is flip equivariant, so flipping back makes the flipped runs agree with the plain ones...
    torch.testing.assert_close(with_flip, without)
    # ...and the prediction of a flipped input really is mirrored (the test would catch a missing flip-back).
    flipped = RecordingModel().inference([image.flip(-1)], [(60, 80)])[0]["sem_seg"][0]
    assert not torch.allclose(flipped, without[0], atol=1.0)
    # Class 1 is the mean of the short sides the model saw.
    torch.testing.assert_close(with_flip[1], torch.full((60, 80), (30 + 45) / 2))


def test_one_unflipped_scale_equals_the_plain_model():
    torch.manual_seed(0)
    model = tiny_mask_former().eval()
    image = torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8)
    plain = model.inference([image], [(100, 150)])[0]["sem_seg"]
    augmented = SemanticTTA(model, [64], max_size=96, flip=False)(image, (100, 150))["sem_seg"]
    torch.testing.assert_close(augmented, plain)


def test_build_tta_follows_the_recipe():
    settings = ["TEST.AUG.MIN_SIZES=[64,96]", "TEST.AUG.MAX_SIZE=256"]
    assert build_tta(object(), load_recipe("synthetic", settings)) is None
    tta = build_tta(object(), load_recipe("synthetic", [*settings, "TEST.AUG.ENABLED=True"]))
    assert (tta.min_sizes, tta.max_size, tta.flip, tta.num_inputs) == ([64, 96], 256, True, 4)


@pytest.mark.parametrize(
    "kwargs,pattern",
    [({"min_sizes": []}, "non-empty"), ({"min_sizes": [0, 10]}, "positive"), ({"max_size": 0}, "max_size")],
)
def test_bad_settings_are_named(kwargs, pattern):
    settings = {"min_sizes": [32], "max_size": 64, **kwargs}
    with pytest.raises(ValueError, match=pattern):
        SemanticTTA(RecordingModel(), **settings)


def test_bad_images_are_named():
    tta = SemanticTTA(RecordingModel(), [32], max_size=64)
    with pytest.raises(ValueError, match=r"\(3, H, W\) image"):
        tta(torch.zeros(30, 40, dtype=torch.uint8), (30, 40))
    with pytest.raises(ValueError, match="uint8"):
        tta(torch.zeros(3, 30, 40), (30, 40))
