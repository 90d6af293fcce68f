"""``medseg-mem plan`` through click: the table, ``--json``, the training levers, ``--data``, and one-line errors
for bad options."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from medseg_mem.cli import main
from medseg_mem.memory.calibration import Calibration, calibration_key, save_calibration

TINY = ["--channels", "4,8,16"]


@pytest.fixture
def calibration_file(tmp_path):
    """Explicit calibrations (inference, bf16 training) in a file of their own, so no test measures anything."""
    path = tmp_path / "cal.json"
    for checkpointing, layout, multiplier in ((True, False, 1.3), (True, True, 1.1)):
        key = calibration_key("cpu", "training", "bf16", checkpointing, layout)
        save_calibration(path, Calibration(multiplier, 40_000_000, key, baseline_bytes=200_000_000))
    for precision, layout in (("fp32", True), ("fp32", False), ("bf16", True)):
        key = calibration_key("cpu", "inference", precision, channels_last=layout)
        save_calibration(path, Calibration(1.1, 50_000_000, key, baseline_bytes=200_000_000))
    return str(path)


def plan(*args):
    return CliRunner().invoke(main, ["plan", *args])


def test_table(calibration_file):
    result = plan("--shape", "1,64,64,48", "--classes", "3", "--budget", "8GB",
                  "--calibration", calibration_file, *TINY)  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "peak memory of the process" in lines[0] and "budget 7.45 GiB (--budget)" in lines[0]
    assert lines[1].split() == ["variant", "process", "added", "budget", "fits", "peak", "in"]
    assert [line.split()[0] for line in lines[2:5]] == ["full", "patch", "cascade"]
    assert all(line.split()[-2:] == ["yes", "inference"] for line in lines[2:5])
    assert "cpu-" in lines[-1] and "process before its first tensor 191 MiB" in lines[-1]


def test_json_keys_and_single_variant(calibration_file):
    result = plan("--shape", "1,64,64,48", "--classes", "3", "--variant", "patch", "--json",
                  "--calibration", calibration_file, *TINY)  # fmt: skip
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert {"variant", "mode", "predicted_bytes", "process_bytes", "baseline_bytes", "budget_bytes", "fits"} <= set(row)
    assert row["variant"] == "patch" and row["mode"] == "inference"
    assert row["budget_source"] == "available RAM less a 10% margin"
    assert row["process_bytes"] == row["predicted_bytes"] + row["baseline_bytes"] == row["predicted_bytes"] + 200_000_000


def test_liver_like_full_does_not_fit(tmp_path):
    result = plan("--shape", "1,512,512,500", "--classes", "3", "--budget", "16GB", "--json", "--no-calibrate",
                  "--calibration", str(tmp_path / "none.json"))  # fmt: skip
    assert result.exit_code == 0, result.output
    fits = {row["variant"]: row["fits"] for row in json.loads(result.output)}
    assert fits == {"full": False, "patch": True, "cascade": True}


@pytest.mark.parametrize(
    "args, option",
    [
        (["--shape", "1,2,3"], "--shape"),
        (["--shape", "a,b,c,d"], "--shape"),
        (["--shape", "1,0,64,64"], "--shape"),
        (["--budget", "lots"], "--budget"),
        (["--budget", "-1GB"], "--budget"),
        (["--slab", "0"], "--slab"),
        (["--slab-size", "0"], "--slab-size"),
        (["--batch-size", "0"], "--batch-size"),
        (["--variant", "ful"], "--variant"),
        (["--cache", "lots"], "--cache"),
        (["--workers", "-1"], "--workers"),
        (["--precision", "fp8"], "--precision"),
        (["--nproc", "0"], "--nproc"),
    ],
)
def test_bad_options_give_one_line_errors(args, option):
    base = {"--shape": "1,64,64,48", "--classes": "3"}
    merged = dict(base, **dict(zip(args[::2], args[1::2])))
    result = plan(*[token for pair in merged.items() for token in pair])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and option in errors[0] and args[1] in errors[0]


def test_importing_the_command_does_not_import_torch():
    code = "import sys, medseg_mem.cli.plan; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


# Training levers, --data -------------------------------------------------------------------------------------

NO_CAL = ["--no-calibrate"]


def plan_json(*args):
    """``plan --json`` rows keyed by variant (stdout only: notices go to stderr)."""
    result = plan(*args, "--json", "--budget", "8GB", *NO_CAL, *TINY)
    assert result.exit_code == 0, result.output
    return {row["variant"]: row for row in json.loads(result.stdout)}


def training(*args, shape="2,96,96,64", variant="full"):
    return plan_json("--shape", shape, "--classes", "3", "--mode", "training", "--variant", variant,
                     "--calibration", "none.json", *args)[variant]  # fmt: skip


def test_training_levers_change_the_plan(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fp32, bf16 = training(), training("--precision", "bf16")
    assert fp32["stage"] == "full" and fp32["batch_size"] if "batch_size" in fp32 else fp32["stage"] == "full"
    assert bf16["predicted_bytes"] < fp32["predicted_bytes"] and bf16["precision"] == "bf16"
    checkpointed = training("--checkpointing")
    assert checkpointed["predicted_bytes"] < fp32["predicted_bytes"] and checkpointed["checkpointing"] is True
    assert training("--no-checkpointing") == fp32
    assert training("--batch-size", "4")["predicted_bytes"] > fp32["predicted_bytes"]
    assert training("--batch", "4") == training("--batch-size", "4")  # plan's older spelling


def test_host_bytes_grow_with_workers_and_only_the_cascade_caches(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = training("--cache", "0")
    workers, cache = training("--cache", "0", "--workers", "2"), training("--cache", "1GB")
    sample = 96 * 96 * 64 * (2 * 4 + 1)  # float32 image (2 channels) + uint8 label
    assert base["host_bytes"] == 2 * sample and workers["host_bytes"] == 4 * 2 * sample  # run's batch: 2
    assert cache == base  # full reads each sample from disk: the cache budget is not its memory
    cascade, uncached = training("--cache", "1GB", variant="cascade"), training("--cache", "0", variant="cascade")
    assert 0.99 * 10**9 < cascade["host_bytes"] - uncached["host_bytes"] <= 10**9  # fills to the budget
    assert cascade["predicted_bytes"] - uncached["predicted_bytes"] >= 0.99 * 10**9  # CPU: host shares the budget


def test_training_table_has_a_host_column(calibration_file):
    result = plan("--shape", "1,64,64,48", "--classes", "3", "--mode", "training", "--precision", "bf16",
                  "--checkpointing", "--budget", "8GB", "--calibration", calibration_file, *TINY)  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("training (bf16, checkpointing, channels-last, batch 2) peak memory of the process")
    assert lines[1].split() == ["variant", "process", "added", "host", "budget", "fits", "peak", "in"]
    assert lines[2].split()[0] == "full" and "included in the process" in lines[5]
    assert "|training-v4-bf16-checkpointing-channels-last" in lines[-1]


def test_no_channels_last_plans_with_the_contiguous_calibration(calibration_file):
    options = ("--shape", "1,64,64,48", "--classes", "3", "--mode", "training", "--precision", "bf16",
               "--checkpointing", "--calibration", calibration_file, "--json", "--variant", "full", *TINY)  # fmt: skip
    default, contiguous = (json.loads(plan(*options, *extra).output)[0] for extra in ((), ("--no-channels-last",)))
    assert default["channels_last"] is True and contiguous["channels_last"] is False
    assert default["calibration"].endswith("-channels-last") and contiguous["calibration"].endswith("-checkpointing")
    assert default["traced_bytes"] != contiguous["traced_bytes"]  # oneDNN copies contiguous activations


def test_options_of_the_other_mode_give_a_notice(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = plan("--shape", "1,64,64,48", "--classes", "3", "--checkpointing", "--workers", "2",
                  "--variant", "full", *NO_CAL, *TINY)  # fmt: skip
    assert result.exit_code == 0, result.output
    notice = [line for line in result.stderr.splitlines() if line.strip()]
    assert notice == ["note: --checkpointing, --workers: only for --mode training; ignored for inference"]
    training = plan("--shape", "1,64,64,48", "--classes", "3", "--mode", "training", "--overlap", "0.5",
                    "--variant", "full", *NO_CAL, *TINY)  # fmt: skip
    assert "note: --overlap: only for --mode inference; ignored for training" in training.stderr
    assert "note" not in plan("--shape", "1,64,64,48", "--classes", "3", "--variant", "full", "--precision", "bf16",
                              *NO_CAL, *TINY).stderr  # fmt: skip


def stage_parameter_bytes(variant, shape=(2, 64, 64, 48), classes=3):
    """The float32 parameter bytes of each stage's network of ``variant`` at the tiny widths."""
    from medseg_mem.core.config import ModelConfig
    from medseg_mem.memory.meta import meta_networks
    from medseg_mem.variants import get_variant

    nets = meta_networks(get_variant(variant), shape[0], classes, ModelConfig(channels=(4, 8, 16)))
    return [sum(p.numel() * p.element_size() for p in net.parameters()) for net in nets.values()]


def test_nproc_adds_ddp_buckets_to_each_rank(tmp_path, monkeypatch):
    from medseg_mem.memory.planner_training import ddp_bytes

    monkeypatch.chdir(tmp_path)
    options = ("--shape", "2,64,64,48", "--classes", "3", "--mode", "training", "--calibration", "none.json")
    one, two = plan_json(*options), plan_json(*options, "--nproc", "2")
    for variant in ("full", "patch", "cascade"):
        added = two[variant]["predicted_bytes"] - one[variant]["predicted_bytes"]
        assert added == two[variant]["resident_bytes"] - one[variant]["resident_bytes"] > 0
        assert added in {ddp_bytes(p, 2) for p in stage_parameter_bytes(variant)}, variant
        assert two[variant]["nproc"] == 2 and one[variant]["nproc"] == 1
        assert two[variant]["host_bytes"] == one[variant]["host_bytes"]  # each rank's loader: the same per rank
    (full,) = stage_parameter_bytes("full")
    assert two["full"]["predicted_bytes"] - one["full"]["predicted_bytes"] == ddp_bytes(full, 2)


def test_nproc_table_is_per_rank_and_cpu_ranks_share_the_budget(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    options = ("--shape", "2,64,64,48", "--classes", "3", "--mode", "training", "--variant", "full", "--cache", "0",
               "--calibration", "none.json", *NO_CAL, *TINY)  # fmt: skip
    rank = json.loads(plan(*options, "--nproc", "2", "--json").stdout)[0]["process_bytes"]
    result = plan(*options, "--nproc", "2", "--budget", str(rank * 3 // 2))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("training (fp32, no checkpointing, channels-last, batch 2) peak memory of the process "
                               "per rank, 2 processes, global batch 2x2, image 2x64x64x48")  # fmt: skip
    assert lines[2].split()[0] == "full" and lines[2].split()[-2] == "NO"  # 2 ranks x predicted > 1.5 x predicted
    assert "fits: 2 x process" in result.output
    alone = plan(*options, "--budget", str(rank * 3 // 2)).output.splitlines()
    assert alone[2].split()[-2] == "yes" and "per rank" not in alone[0]


def test_nproc_in_inference_gives_a_notice(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = plan("--shape", "1,64,64,48", "--classes", "3", "--variant", "full", "--nproc", "2", "--json",
                  *NO_CAL, *TINY)  # fmt: skip
    assert result.exit_code == 0, result.output
    notice = [line for line in result.stderr.splitlines() if line.strip()]
    assert notice == ["note: --nproc: only for --mode training; ignored for inference"]
    assert json.loads(result.stdout)[0]["nproc"] == 1


def test_inference_levers_reach_the_plan(calibration_file):
    def row(*args):
        # 160x160 slabs: every convolution on oneDNN (a smaller slab group of one takes PyTorch's slow kernels, and
        # then three slabs per call, on oneDNN, take less memory than one)
        result = plan("--shape", "1,160,160,48", "--classes", "3", "--variant", "patch", "--json", "--budget", "8GB",
                      "--calibration", calibration_file, *TINY, *args)  # fmt: skip
        assert result.exit_code == 0, result.output
        return json.loads(result.output)[0]

    base, bf16, overlap, batch = row(), row("--precision", "bf16"), row("--overlap", "0.5"), row("--sw-batch-size", "3")
    assert bf16["precision"] == "bf16" and bf16["predicted_bytes"] < base["predicted_bytes"]
    # the inference's own count: at these tiny widths loading the scan whole is the plan's peak (the same for all)
    assert overlap["overlap"] == 0.5 and overlap["traced_bytes"] > base["traced_bytes"]
    assert batch["sw_batch_size"] == 3 and batch["traced_bytes"] > base["traced_bytes"]
    assert overlap["preprocessing_bytes"] == batch["preprocessing_bytes"] == base["preprocessing_bytes"] > 0
    assert base["calibration"].endswith("inference-v4-fp32-channels-last")
    assert row("--no-channels-last")["calibration"].endswith("inference-v4-fp32")


def write_prepared(root, shapes, channels=2, classes=("background", "left", "right")):
    """A hand-written prepared folder: manifest.json and split.json only (the planner reads no case file)."""
    from medseg_mem.data.prepared import FORMAT

    root.mkdir(parents=True)
    cases = [{"id": f"case_{i}", "prepared_shape": list(shape)} for i, shape in enumerate(shapes)]
    manifest = dict(format=FORMAT, name="Tiny", source=str(root), class_names=list(classes),
                    modalities=["MRI"] * channels, in_channels=channels, preprocessing={}, cases=cases)  # fmt: skip
    (root / "manifest.json").write_text(json.dumps(manifest))
    ids = [case["id"] for case in cases]
    (root / "split.json").write_text(json.dumps({"seed": 0, "train": ids[:-2], "val": ids[-2:-1], "test": ids[-1:]}))
    return str(root)


def test_data_takes_the_largest_case_and_the_classes(tmp_path):
    data = write_prepared(tmp_path / "few", [(40, 40, 30), (64, 48, 40), (60, 60, 20), (30, 30, 30)])
    from_data = plan_json("--data", data, "--mode", "training", "--calibration", str(tmp_path / "c.json"))
    explicit = plan_json("--shape", "2,64,48,40", "--classes", "3", "--mode", "training",
                         "--calibration", str(tmp_path / "c.json"))  # fmt: skip
    assert from_data["full"] == explicit["full"] and from_data["patch"] == explicit["patch"]
    # the cascade caches at most its two training cases, the --shape plan what fits the 1 GiB cache
    assert from_data["cascade"]["host_bytes"] < explicit["cascade"]["host_bytes"]
    result = plan("--data", data, "--variant", "full", "--budget", "8GB", *NO_CAL, *TINY,
                  "--calibration", str(tmp_path / "c.json"))  # fmt: skip
    assert result.exit_code == 0 and "image 2x64x48x40, 3 classes" in result.output.splitlines()[0]


def test_host_bytes_are_bounded_whatever_the_number_of_cases(tmp_path):
    many = write_prepared(tmp_path / "many", [(64, 48, 40)] * 300 + [(20, 20, 20)] * 10)
    huge = write_prepared(tmp_path / "huge", [(64, 48, 40)] * 3000)
    rows = [plan_json("--data", d, "--mode", "training", "--workers", "3", "--calibration", str(tmp_path / "c.json"))
            for d in (many, huge)]  # fmt: skip
    assert rows[0]["full"] == rows[1]["full"] and rows[0]["full"]["host_bytes"] < 2**30
    samples = rows[0]["full"]["host_bytes"]  # what --workers 3 prefetch; the cascade caches beside them, up to 1 GiB
    assert all(samples < row["cascade"]["host_bytes"] <= samples + 2**30 for row in rows)


@pytest.mark.parametrize(
    "args, named",
    [
        (["--classes", "3"], ("--shape", "--data")),
        ([], ("--shape", "--classes", "--data")),
        (["--data", "somewhere", "--shape", "1,64,64,48"], ("--data", "--shape")),
        (["--data", "somewhere", "--classes", "3"], ("--data", "--classes")),
    ],
)
def test_shape_or_data_usage_errors(args, named):
    result = plan(*args, *NO_CAL)
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and all(option in errors[0] for option in named)


@pytest.mark.parametrize("break_it", ["missing", "no_manifest", "bad_shape"])
def test_malformed_data_gives_one_line_error(tmp_path, break_it):
    root = tmp_path / "prepared"
    if break_it != "missing":
        write_prepared(root, [(64, 48, 40), (32, 32, 32), (16, 16, 16)])
    if break_it == "no_manifest":
        (root / "manifest.json").unlink()
    if break_it == "bad_shape":
        manifest = json.loads((root / "manifest.json").read_text())
        manifest["cases"][1]["prepared_shape"] = [32, 32]
        (root / "manifest.json").write_text(json.dumps(manifest))
    result = plan("--data", str(root), *NO_CAL)
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("Error: ") and str(root) in errors[0]
    assert "case_1" in errors[0] if break_it == "bad_shape" else "prepare" in errors[0]


def test_unwritable_calibration_cache_fails_before_measuring(tmp_path, monkeypatch):
    """A calibration that would take minutes to measure is not measured when its cache cannot be written."""
    import medseg_mem.memory.calibration as calibration_module

    def measuring(*args, **kwargs):
        raise AssertionError("measured although the cache cannot be written")

    monkeypatch.setattr(calibration_module, "calibrate", measuring)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache's folder should be")
    result = plan("--shape", "1,64,64,48", "--classes", "3", "--mode", "training", "--precision", "bf16",
                  "--calibration", str(blocker / "cal.json"), *TINY)  # fmt: skip
    assert result.exit_code == 1 and "Traceback" not in result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: --calibration") and "is a file, not a folder" in last
    assert blocker.read_text() == "a file where the cache's folder should be"
