import torch

from custom.data.transforms import LoadCXR
from custom.models.inferers import AffineTTAInferer
from tests.test_bundle import SAMPLE


def test_shift_moves_content_by_the_given_fraction():
    image = torch.zeros(1, 1, 32, 32)
    image[0, 0, 10, 8] = 1.0
    moved = AffineTTAInferer.transform(image, dx=0.25, dy=0.0, zoom=1.0)  # x = last axis
    assert moved[0, 0].flatten().argmax().item() == 10 * 32 + 16


def test_zoom_magnifies_about_the_centre():
    image = torch.zeros(1, 1, 32, 32)
    image[0, 0, 8:24, 8:24] = 1.0
    zoomed = AffineTTAInferer.transform(image, 0.0, 0.0, zoom=2.0)
    assert zoomed[0, 0, 2:30, 2:30].min() > 0.99  # the central square now fills the image


def test_tta_logits_are_the_mean_over_views_on_a_real_image():
    image = LoadCXR()(next((SAMPLE / "test" / "NORMAL").glob("*.jpeg")))[None] / 255.0
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 5, stride=4), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    inferer = AffineTTAInferer(shift=0.05, zooms=(0.9,))
    with torch.no_grad():
        out = inferer(image, net)
        views = [net(AffineTTAInferer.transform(image, *v)) for v in inferer.views]
    assert len(inferer.views) == 6
    assert out.shape == (1, 2)
    torch.testing.assert_close(out, torch.stack(views).mean(0))
    assert not torch.allclose(out, views[0])
