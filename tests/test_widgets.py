import pytest
import torch
from matplotlib.figure import Figure

from course import datasets, models
from course.schedules import linear_schedule
from course.widgets import TimestepScrubber, forward_process_scrubber


def _render(frame, i):
    fig = Figure(figsize=(1, 1))
    fig.subplots().imshow(frame.numpy(), vmin=0, vmax=4)
    return fig


def test_scrubber_renders_each_frame_once_and_swaps_images():
    frames = [torch.full((4, 4), float(i)) for i in range(5)]
    scrubber = TimestepScrubber(frames, _render, labels=[f"t = {i}" for i in range(5)])
    assert scrubber.render_count == 5 and len(set(scrubber.pngs)) == 5
    for i in (3, 1, 4, 0, 3):
        scrubber.slider.value = i
        assert scrubber.image.value == scrubber.pngs[i]
        assert scrubber.readout.value == f"t = {i}"
    assert scrubber.render_count == 5  # moving the slider rendered nothing new


def test_scrubber_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one frame"):
        TimestepScrubber([], _render)
    with pytest.raises(ValueError, match="labels has 1 entries for 2 frames"):
        TimestepScrubber([torch.zeros(2, 2)] * 2, _render, labels=["a"])


def test_forward_process_scrubber_over_image_and_points():
    schedule = linear_schedule()
    image = datasets.digits()[0][0]
    scrubber = forward_process_scrubber(image, schedule, [0, 500, 999])
    assert len(scrubber.pngs) == 3 and scrubber.labels == ["t = 0", "t = 500", "t = 999"]
    assert torch.equal(scrubber.frames[0], scrubber.frames[0])
    # frame 0 is x_t at t = 0: nearly the image; the last frame is nearly pure noise
    assert (scrubber.frames[0] - image).abs().max() < 0.05
    assert (scrubber.frames[-1] - image).abs().mean() > 0.5
    points = forward_process_scrubber(datasets.two_moons(n=300)[0], schedule, [0, 999])
    assert points.frames[1].shape == (300, 2)
    with pytest.raises(ValueError, match="timesteps must lie in"):
        forward_process_scrubber(image, schedule, [0, 1000])
    with pytest.raises(ValueError, match="one image"):
        forward_process_scrubber(torch.randn(2, 1, 8, 8), schedule, [0])


def test_reverse_process_scrubber_runs_from_noise_to_data_for_points_and_images():
    from course import ddim, ddpm, train
    from course.widgets import reverse_process_scrubber

    model = models.load_toy("swiss_roll")
    _, frames = ddpm.ddpm_sample(model, linear_schedule(), (200, 2), seed=0, keep=(999, 500, 0), progress=False)
    scrubber = reverse_process_scrubber(frames)
    assert scrubber.labels == ["t = 999", "t = 500", "t = 0"] and len(set(scrubber.pngs)) == 3
    scrubber.slider.value = 2
    assert scrubber.image.value == scrubber.pngs[2] and scrubber.readout.value == "t = 0"
    x_t, x0_pred = scrubber.frames[2]
    assert x0_pred.abs().max() > 1  # points are not clipped to [-1, 1]; images are
    images = {999: (torch.randn(4, 1, 16, 16), torch.zeros(4, 1, 16, 16)), 0: (torch.zeros(4, 1, 16, 16),) * 2}
    assert len(reverse_process_scrubber(images).pngs) == 2
    with pytest.raises(ValueError, match="keep="):
        reverse_process_scrubber({})


def test_ddim_explorer_samples_each_setting_once_and_renders_each_frame_once():
    from course import ddim, ddpm
    from course.widgets import DDIMExplorer

    schedule = linear_schedule()
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))

    def sample(steps, eta, x_T):
        return ddim.ddim_sample(lambda x, t: 0.1 * x, schedule, tuple(x_T.shape), steps=steps, eta=eta,
                                    x_T=x_T, keep="all", progress=False)

    explorer = DDIMExplorer(sample, x_T, steps_choices=(5, 10), eta_choices=(0.0, 1.0))
    # it opens on the samples: after 5 of 5 steps
    assert explorer.slider.max == 5 and explorer.readout.value == "after 5 of 5 steps: x_0"
    last = explorer.image.value
    explorer.slider.value = 0
    first = explorer.image.value
    assert first != last and explorer.readout.value == "after 0 of 5 steps: t = 999"
    explorer.slider.value = 4
    assert explorer.readout.value.endswith("t = 199")
    explorer.slider.value = 5
    explorer.steps.value = 10  # at the last step it stays at the last step of the new trajectory
    assert explorer.slider.max == 10 and explorer.slider.value == 10 and explorer.readout.value.endswith("x_0")
    explorer.eta.value = 1.0
    explorer.steps.value = 5
    explorer.eta.value = 0.0
    assert explorer.sample_count == 4  # (5, 0), (10, 0), (10, 1), (5, 1): (5, 0) was not sampled again
    assert explorer.image.value == explorer.pngs[(5, 0.0, 5)] == last
    renders = explorer.render_count
    explorer.slider.value = 0
    assert explorer.render_count == renders and explorer.image.value == first
    with pytest.raises(ValueError, match="at least one choice"):
        DDIMExplorer(sample, x_T, steps_choices=())


def test_show_displays_a_png_once_and_closes_pyplot_figures(capsys):
    import matplotlib.pyplot as plt

    from course import plotting

    fig, ax = plt.subplots()
    ax.plot([0, 1])
    plotting.show(fig)
    assert fig.number not in plt.get_fignums()  # the inline backend will not draw it again
    plain = Figure()
    plain.subplots().plot([0, 1])
    plotting.show(plain)
    assert capsys.readouterr().out.count("Image") == 2


def test_grid_png_draws_a_grid_and_rejects_other_shapes():
    import io

    from PIL import Image

    from course import plotting

    png = plotting.grid_png(torch.zeros(10, 1, 16, 16), ncols=4, scale=2)
    image = Image.open(io.BytesIO(png))
    assert image.size == ((4 * 17 + 1) * 2, (3 * 17 + 1) * 2)
    with pytest.raises(ValueError, match="N, 1, H, W"):
        plotting.grid_png(torch.zeros(3, 16, 16))


def test_clamp_to_box_counts_the_points_outside_and_moves_them_to_the_edge():
    from course.plotting import clamp_to_box

    points = torch.tensor([[0.5, -0.5], [10.0, 0.0], [0.0, -4.0], [3.5, 3.5]])
    clamped, outside = clamp_to_box(points, 3.5)
    assert outside == 2  # a point on the edge is inside
    assert torch.equal(clamped, torch.tensor([[0.5, -0.5], [3.5, 0.0], [0.0, -3.5], [3.5, 3.5]]))
    assert clamped.abs().max() <= 3.5 and points[1, 0] == 10.0  # the input is not modified


def test_widgets_display_as_static_html_while_the_site_is_built(monkeypatch):
    from IPython.core.interactiveshell import InteractiveShell
    from course import ddim
    from course.widgets import DDIMExplorer, display

    frames = [torch.full((4, 4), float(i)) for i in range(3)]
    scrubber = TimestepScrubber(frames, _render, labels=["t = 0", "t = 1", "t = 2"], description="t")
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    explorer = DDIMExplorer(lambda steps, eta, x: ddim.ddim_sample(lambda x, t: 0.1 * x, linear_schedule(),
                                                                   tuple(x.shape), steps=steps, eta=eta, x_T=x,
                                                                   keep="all", progress=False),
                            x_T, steps_choices=(3, 5))
    shell = InteractiveShell.instance()
    published = []
    monkeypatch.setattr(shell.display_pub, "publish", lambda data, metadata=None, **kw: published.append(data))
    monkeypatch.delenv(display.STATIC_ENV, raising=False)
    scrubber._ipython_display_()
    assert "application/vnd.jupyter.widget-view+json" in published[-1]  # in a kernel: the live widget
    monkeypatch.setenv(display.STATIC_ENV, "1")
    scrubber._ipython_display_()
    static = published[-1]["text/html"]
    assert "application/vnd.jupyter.widget-view+json" not in published[-1]
    assert static.count("<img") == 3 and "type='range'" in static and "max='2'" in static  # every frame, no kernel
    assert static.count("display: none") == 2 and "t = 2" in static
    explorer._ipython_display_()
    page = published[-1]["text/html"]
    assert page.count("<img") == 1 and "Interactive in a kernel" in page and "steps = 3" in page
    assert "after 3 of 3 steps: x_0" in page  # its readout, as first shown
