"""Every config composes and builds; bad configuration fails before any image is read."""

from importlib import resources
from pathlib import Path

import pytest
from hydra.utils import get_object, instantiate

from synth.app import build_runner, check_group_choices
from synth.errors import ConfigError
from synth.runner import STAGE_GROUPS
from tests.conftest import compose_config, run_synth

GROUPS = ("data", "segmentation", "albedo", "shadow", "recombine", "captioning", "writer", "logger")
# Options that cannot be built without something the user supplies.
REQUIRED = {("data", "folder"): ["data.path={samples}"], ("data", "csv"): ["data.path={csv}"],
            ("segmentation", "mask_folder"): ["segmentation.path={samples}"],
            ("segmentation", "sam"): ["segmentation.checkpoint={samples}/astronaut.jpg"]}  # exists; loads in setup


def group_options():
    conf = resources.files("synth.conf")
    for group in GROUPS:
        for entry in sorted(conf.joinpath(group).iterdir(), key=lambda p: p.name):
            if entry.name.endswith(".yaml"):
                yield group, entry.name[:-5]


# What each group's object must offer the runner.
INTERFACE = {"data": ("items", "load"), "writer": ("open", "write", "close"), "logger": ("start", "finish"),
             **{group: ("setup", "process") for group in STAGE_GROUPS}}


@pytest.mark.parametrize("group, option", list(group_options()))
def test_every_option_composes_and_instantiates(group, option, samples_dir, tmp_path):
    table = tmp_path / "list.csv"  # data=csv: two bundled photos, one relative to the table's folder
    table.write_text(f"image_path\n{samples_dir / 'astronaut.jpg'}\nphotos/{(samples_dir / 'coffee.jpg').name}\n")
    (tmp_path / "photos").symlink_to(samples_dir)
    extra = REQUIRED.get((group, option), [])
    cfg = compose_config(f"{group}={option}", *[e.format(samples=samples_dir, csv=table) for e in extra])
    obj = instantiate(cfg[group], _convert_="all")  # constructors validate; models load in setup()
    target = get_object(cfg[group]["_target_"])
    if isinstance(target, type):  # (a factory function builds what it documents)
        assert type(obj) is target, f"{group}={option} built a {type(obj).__name__}, not its _target_"
    assert all(callable(getattr(obj, method, None)) for method in INTERFACE[group])
    if group in STAGE_GROUPS:
        assert obj.name == group  # its parameters and timings are recorded under the group's name
    if group == "data":  # the source lists real inputs
        paths = [Path(item.path) for item in obj.items()]
        assert paths and all(p.is_file() for p in paths)
        if option == "csv":
            assert [p.name for p in paths] == ["astronaut.jpg", "coffee.jpg"]


def test_default_config_builds_the_stages_in_listed_order(tmp_path):
    runner = build_runner(compose_config(), tmp_path)
    assert [s.name for s in runner.stages] == list(STAGE_GROUPS)
    runner = build_runner(compose_config("~captioning"), tmp_path)
    assert [s.name for s in runner.stages] == ["segmentation", "albedo", "shadow", "recombine"]


@pytest.mark.parametrize("override, message", [
    ("shadow.opacity=1.7", "shadow.opacity=1.7: 1.7 is not a number in [0, 1]"),
    ("shadow.blur=[40,20]", "shadow.blur=[40, 20]: range has lo > hi"),
    ("shadow.blur=40", "shadow.blur=40: 40 is even"),
    ("shadow.base=paint", "shadow.base=paint: choose from albedo, foreground"),
    ("data=folder", "data.path: required with data=folder"),
    ("batch_size=0", "batch_size=0: must be an integer >= 1"),
    ("batch_size=abc", "batch_size=abc: must be an integer >= 1"),
    ("segmentation.margin=[0.05,0.1]", "segmentation.margin=[0.05,0.1]: must be a number >= 0 and < 0.5"),
    ("albedo.balance=high", "albedo.balance=high: must be a number >= 0 and < 0.5"),
    ("~albedo", "shadow: needs albedo from an earlier stage"),
])
def test_bad_config_is_one_line_naming_the_key(override, message, tmp_path):
    with pytest.raises(ConfigError) as err:
        build_runner(compose_config(override), tmp_path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unknown_group_option_lists_the_choices():
    problem = check_group_choices(["shadow=nope"])
    assert problem.startswith("shadow=nope: unknown option; choose from ") and "hard" in problem
    assert check_group_choices(["shadow=hard", "shadow.opacity=0.3", "~captioning"]) is None


def test_cli_refuses_bad_config_before_touching_images(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_synth(run_dir, "shadow.opacity=1.7", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: shadow.opacity=1.7: 1.7 is not a number in [0, 1]"]
    assert not (run_dir / "outputs").exists() and not (run_dir / "metadata.json").exists()
    proc = run_synth(run_dir, "segmentation=nope", check=False)
    assert proc.returncode == 2 and "segmentation=nope: unknown option; choose from" in proc.stderr
