import pytest
import torch

from course import datasets


@pytest.mark.parametrize("name", sorted(datasets.TOY_DATASETS))
def test_toys_are_deterministic_labelled_and_unit_scale(name):
    x1, y1 = datasets.toy_2d(name, n=500, seed=3)
    x2, y2 = datasets.toy_2d(name, n=500, seed=3)
    assert x1.shape == (500, 2) and y1.shape == (500,)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, datasets.toy_2d(name, n=500, seed=4)[0])
    assert 0.3 < x1.std().item() < 2.0
    assert len(y1.unique()) >= 2


def test_gaussian_mixture_score_is_the_gradient_of_its_log_density():
    gm = datasets.GaussianMixture2D()
    x = torch.randn(50, 2, dtype=torch.float64) * 2
    for alpha_bar in (1.0, 0.5, 0.01):
        xg = x.clone().requires_grad_()
        gm.log_prob(xg, alpha_bar).sum().backward()
        assert torch.allclose(xg.grad, gm.score(x, alpha_bar), atol=1e-10)
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        gm.score(torch.randn(5, 3))


def test_digits_split_range_and_labels():
    train, train_labels = datasets.digits("train")
    test, test_labels = datasets.digits("test")
    assert train.shape == (1500, 1, 16, 16) and test.shape == (297, 1, 16, 16)
    assert train.min() >= -1 and train.max() <= 1
    assert set(train_labels.tolist()) == set(range(10))
    assert datasets.digits("all")[0].shape[0] == 1797
    with pytest.raises(ValueError, match="split must be one of"):
        datasets.digits("validation")


def test_shapes_carry_class_caption_and_mask():
    s = datasets.shapes(n=64, size=32, seed=0)
    assert s.images.shape == (64, 3, 32, 32) and s.masks.shape == (64, 1, 32, 32)
    assert s.images.min() >= -1 and s.images.max() <= 1
    for i in range(64):
        shape_name = datasets.SHAPE_NAMES[s.labels[i]]
        colour = datasets.COLOUR_NAMES[s.colours[i]]
        assert s.captions[i] == f"a {colour} {shape_name}"
        inside = s.images[i][:, s.masks[i, 0] > 0]  # pixels under the mask carry the shape's colour
        expected = torch.tensor(datasets.COLOUR_RGB[colour]) * 2 - 1
        assert torch.allclose(inside.median(1).values, expected, atol=0.05)
    assert 0.05 < s.masks.mean() < 0.4
    edges = s.edges()
    assert edges.sum() < s.masks.sum() and ((edges > 0) <= (s.masks > 0)).all()
    assert torch.equal(datasets.shapes(n=64, seed=0).images, s.images)
    with pytest.raises(ValueError, match="at least 8 pixels"):
        datasets.shapes(n=4, size=4)
