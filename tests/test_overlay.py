"""Overlays: the planes through the foreground, outlines that match the label maps pixel for pixel, ``show`` (a PNG
per case of a run, one-line errors) and ``predict --overlay``."""

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

import medseg_mem.overlay.show as show_module
import medseg_mem.predict.overlay as predict_overlay
from medseg_mem.cli import main
from medseg_mem.overlay import figure as overlay_figure
from medseg_mem.overlay.planes import focus_point, inner_outline, outer_outline, outlines, plane
from test_predict import analytic, bright_scan, make_run, save_tilted  # noqa: F401 - analytic is a fixture

NAMES = ("background", "left", "right")
RED, GREEN = (255, 0, 0), (0, 255, 0)


def synthetic_case():
    """A 12x10x8 image with a truth box of class 1 and a prediction one voxel longer along z."""
    image = np.random.default_rng(0).normal(size=(12, 10, 8)).astype(np.float32)
    truth = np.zeros(image.shape, np.uint8)
    truth[3:8, 2:7, 2:5] = 1
    prediction = truth.copy()
    prediction[3:8, 2:7, 5] = 1
    return image, prediction, truth


def test_the_planes_pass_through_the_foreground_or_else_the_centre():
    _, prediction, truth = synthetic_case()
    point = focus_point(prediction, truth)
    assert all(plane(truth, axis, point).any() for axis in range(3))
    two = np.zeros((20, 4, 4), np.uint8)
    two[1, 1, 1] = two[18, 2, 2] = 1  # the centroid lies between the pieces: the nearest foreground voxel is taken
    assert two[focus_point(two, None)] == 1
    assert focus_point(np.zeros((6, 8, 4), np.uint8), None) == (3, 4, 2)


def test_outlines_are_inside_the_truth_and_just_outside_the_prediction():
    mask = np.zeros((7, 7), bool)
    mask[2:5, 2:5] = True
    inner, outer = inner_outline(mask), outer_outline(mask)
    assert inner.sum() == 8 and not inner[3, 3] and (inner <= mask).all()
    assert outer.sum() == 16 and not (outer & mask).any() and outer[1, 1]  # the corner too: a closed line
    labels = np.zeros((7, 7), np.uint8)
    labels[1:3, 1:3], labels[4:6, 4:6] = 1, 2
    assert outlines(labels, [1, 2], outside=False).sum() == 8  # each 2x2 square is all boundary


def rendered_pixel(fig, ax, x: float, y: float) -> tuple:
    """The RGB of the figure's pixel at data coordinates (x, y) of ``ax``."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())
    column, row = ax.transData.transform((x, y))
    return tuple(int(v) for v in pixels[pixels.shape[0] - 1 - int(row), int(column), :3])


def test_the_png_shows_the_outlines_where_the_label_maps_have_their_boundaries(tmp_path):
    image, prediction, truth = synthetic_case()
    fig = overlay_figure.overlay_figure(image, prediction, truth, NAMES, title="case")
    point = focus_point(prediction, truth)
    ax = fig.axes[2]  # the plane across z: x right, y up
    assert ax.get_title() == f"z = {point[2]}"
    assert rendered_pixel(fig, ax, 3, 2) == GREEN  # a corner voxel of the truth box: its inner outline
    assert rendered_pixel(fig, ax, 2, 4) == RED  # the voxel left of the predicted box: its outer outline
    assert rendered_pixel(fig, ax, 5, 4) not in (RED, GREEN)  # inside: the image with the class's fill
    across_y = fig.axes[1]  # x right, z up: the prediction reaches one slice further than the truth
    assert rendered_pixel(fig, across_y, 5, 6) == RED and rendered_pixel(fig, across_y, 5, 5) != GREEN
    path = overlay_figure.draw_overlay(tmp_path / "case.png", image, prediction, truth, NAMES, title="case")
    width, height = (int(v * overlay_figure.DPI) for v in fig.get_size_inches())
    with Image.open(path) as png:
        assert png.size == (width, height)
        column, row = ax.transData.transform((3, 2))
        assert png.convert("RGB").getpixel((int(column), height - 1 - int(row))) == GREEN


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, trained_runs):
    """A copy of the session's 2-step ``full`` run of the tiny task (``show`` draws into it): its runs folder and run
    folder."""
    shared = trained_runs("full")
    runs = tmp_path_factory.mktemp("show") / "runs"
    return runs, Path(shutil.copytree(shared, runs / shared.name))


def test_show_draws_a_png_per_test_case_into_the_run_folder(tiny_run, tiny_prepared):
    runs, run_dir = tiny_run
    result = CliRunner().invoke(main, ["show", run_dir.name, "--runs", str(runs), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"drew {len(tiny_prepared.ids('test'))} case(s) of run {run_dir.name} (full)")
    drawn = sorted(p.stem for p in (run_dir / "show").glob("*.png"))
    assert drawn == sorted(tiny_prepared.ids("test"))
    with Image.open(run_dir / "show" / f"{drawn[0]}.png") as png:
        assert png.format == "PNG" and png.size[0] >= overlay_figure.MIN_INCHES * overlay_figure.DPI


def test_show_draws_the_variants_prediction_and_the_cases_ground_truth(tiny_run, tiny_prepared, analytic,
                                                                        monkeypatch, tmp_path):  # noqa: F811
    drawn = {}
    monkeypatch.setattr(show_module, "draw_overlay", lambda path, *args, **kw: drawn.update(args=args, kw=kw))
    case_id = tiny_prepared.ids("train")[0]  # a named case may come from any split
    show_module.show_run(tiny_run[1], [case_id], tmp_path / "out", device="cpu")
    image, prediction, truth, names = drawn["args"]
    case = tiny_prepared.load(case_id)
    np.testing.assert_array_equal(prediction, np.asarray(case.image[0]) > 0)  # the analytic "network"
    np.testing.assert_array_equal(truth, case.label[0])
    assert names == NAMES
    assert drawn["kw"]["title"].startswith(f"{case_id}: run {tiny_run[1].name} (full)\nDice (%) left")


@pytest.mark.parametrize("args, says", [
    (["no-such-run"], "RUN no-such-run: no such run folder, nor a run id in"),
    (["RUN", "tiny_999"], "CASE tiny_999: not a case of the run's dataset"),
])  # fmt: skip
def test_show_on_a_missing_run_or_an_unknown_case_is_one_line(tiny_run, args, says):
    runs, run_dir = tiny_run
    args = [run_dir.name if a == "RUN" else a for a in args]
    result = CliRunner().invoke(main, ["show", *args, "--runs", str(runs)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().count("\n") == 0 and says in result.output


def test_show_on_an_unfinished_run_names_run(tiny_run, tmp_path):
    unfinished = tmp_path / tiny_run[1].name
    shutil.copytree(tiny_run[1], unfinished)
    (unfinished / "full" / "best.pt").unlink()
    result = CliRunner().invoke(main, ["show", str(unfinished)])
    assert result.exit_code == 1 and result.output.strip().count("\n") == 0
    assert f"Error: RUN {unfinished}: the full run lacks full/best.pt" in result.output


def test_show_keeps_files_in_out_unless_overwrite(tiny_run, tiny_prepared, tmp_path):
    case_id = tiny_prepared.ids("test")[0]
    (tmp_path / f"{case_id}.png").write_bytes(b"mine")
    args = ["show", str(tiny_run[1]), case_id, "--out", str(tmp_path), "--device", "cpu"]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 1 and "pass --overwrite" in refused.output
    assert (tmp_path / f"{case_id}.png").read_bytes() == b"mine"
    assert CliRunner().invoke(main, [*args, "--overwrite"]).exit_code == 0


def test_predict_overlay_draws_beside_each_label_map_in_ras_order(tmp_path, analytic, monkeypatch):  # noqa: F811
    run, scan = make_run(tmp_path), save_tilted(bright_scan(), tmp_path / "scan.nii.gz")
    args = ["predict", "--quiet", "--checkpoint", str(run), str(scan), "--out", str(tmp_path / "out"), "--overlay"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "out" / "scan_overlay.png") as png:
        assert png.format == "PNG"
    assert CliRunner().invoke(main, [*args, "--overwrite"]).exit_code == 0  # label map and overlay replaced
    drawn = {}
    monkeypatch.setattr(overlay_figure, "draw_overlay", lambda path, *a, **kw: drawn.update(args=a, kw=kw))
    label_map = tmp_path / "out" / "scan_seg.nii.gz"
    predict_overlay.draw_scan_overlay(scan, np.asarray(nib.load(str(label_map)).dataobj), tmp_path / "x.png",
                                      NAMES, "t")  # fmt: skip
    canonical = nib.as_closest_canonical(nib.load(str(scan)))
    np.testing.assert_array_equal(drawn["args"][0], np.asarray(canonical.dataobj))
    labels = nib.as_closest_canonical(nib.load(str(label_map)))
    np.testing.assert_array_equal(drawn["args"][1], np.asarray(labels.dataobj))
    assert drawn["kw"]["spacing"] == pytest.approx(canonical.header.get_zooms()[:3])


def test_predict_overlay_keeps_an_existing_overlay_unless_overwrite(tmp_path, analytic):  # noqa: F811
    run, scan = make_run(tmp_path), save_tilted(bright_scan(), tmp_path / "scan.nii.gz")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "scan_overlay.png").write_bytes(b"mine")
    result = CliRunner().invoke(main, ["predict", "--quiet", "--checkpoint", str(run), str(scan), "--out",
                                       str(tmp_path / "out"), "--overlay"])  # fmt: skip
    assert result.exit_code == 1 and "1 overlay(s) exist already (scan_overlay.png)" in result.output
    assert not (tmp_path / "out" / "scan_seg.nii.gz").exists()  # refused before any scan was segmented
