"""The training forward's random draws from the step's own generator (detector/step_random.py)."""

import torch
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from detector.step_random import StepSampler, StepTransform, drawing_from


def _matched():
    g = torch.Generator().manual_seed(0)
    return [torch.randint(-2, 4, (300,), generator=g), torch.randint(-1, 2, (50,), generator=g)]


def _draw(sampler, matched):
    pos, neg = sampler(matched)
    return [torch.where(p)[0].tolist() for p in pos], [torch.where(n)[0].tolist() for n in neg]


def test_the_sampler_takes_torchvisions_counts_from_the_steps_generator():
    matched = _matched()
    tv, ours = BalancedPositiveNegativeSampler(64, 0.25), StepSampler(64, 0.25)
    torch.manual_seed(1)
    ref = _draw(tv, matched)
    torch.manual_seed(1)
    assert _draw(ours, matched) == ref  # without a step's generator: torchvision's own draws
    with drawing_from(5):
        a = _draw(ours, matched)
    torch.manual_seed(1)  # the process's generator plays no part ...
    with drawing_from(5):
        b = _draw(ours, matched)
    with drawing_from(6):
        c = _draw(ours, matched)
    assert a == b and a != c  # ... the seed does
    torch.manual_seed(1)
    with drawing_from(None):  # a GPU run's: the process's generator, torchvision's draws
        assert _draw(ours, matched) == ref
    for (pos, neg), (rpos, rneg) in zip(zip(*a), zip(*ref)):
        assert (len(pos), len(neg)) == (len(rpos), len(rneg))
    for m, (pos, neg) in zip(matched, zip(*a)):
        assert all(m[i] >= 1 for i in pos) and all(m[i] == 0 for i in neg)


def test_the_training_size_is_drawn_from_the_steps_generator():
    t = StepTransform(min_size=(96, 112, 128, 144, 160), max_size=400, image_mean=[0.0] * 3, image_std=[1.0] * 3)
    assert isinstance(t, GeneralizedRCNNTransform)
    for seed in range(3):
        with drawing_from(seed):
            first = [t.torch_choice(t.min_size) for _ in range(8)]
        torch.manual_seed(seed + 10)
        with drawing_from(seed):
            assert [t.torch_choice(t.min_size) for _ in range(8)] == first
    assert len({t.torch_choice(t.min_size) for _ in range(50)}) > 1  # no generator: torchvision's draw
