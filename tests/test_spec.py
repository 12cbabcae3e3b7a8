"""Spec loading: extends, merging, --set, defaults, and every error path naming file and key."""
from pathlib import Path

import pytest

from runner import SpecError
from runner.spec import loading as spec_module

SPECS = Path(__file__).resolve().parents[1] / "specs"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def load(path, catalogue, *overrides):
    return spec_module.load(path, catalogue, overrides)


def error(path, catalogue, *overrides) -> SpecError:
    with pytest.raises(SpecError) as info:
        load(path, catalogue, *overrides)
    return info.value


@pytest.mark.parametrize("name", ["p1_q1_raw", "p1_q2_normalize", "p1_q3_flip", "p1_q4_crop"])
def test_part1_specs_are_the_homework_recipe(name, catalogue):
    spec = load(SPECS / f"{name}.toml", catalogue)
    assert spec.name == name
    assert spec["model"] == {"name": "table1", "widths": [32, 32, 64], "hidden": 64}
    assert spec["train"]["iterations"] == 2000 and spec["train"]["batch_size"] == 100
    assert spec["data"]["train"] == ["data_batch_1"] and spec["data"]["test"] == ["test_batch"]
    assert spec["question"].startswith("P1 Q")


def test_part1_transform_order_follows_the_homework(catalogue):
    order = {name: load(SPECS / f"{name}.toml", catalogue)["data"]["transforms"]
             for name in ["p1_q1_raw", "p1_q2_normalize", "p1_q3_flip", "p1_q4_crop"]}
    assert order == {"p1_q1_raw": [], "p1_q2_normalize": ["normalize"], "p1_q3_flip": ["flip", "normalize"],
                     "p1_q4_crop": ["flip", "normalize", "pad_crop"]}


def test_extends_merges_tables_and_replaces_lists(tmp_path, catalogue):
    write(tmp_path, "base.toml", '[model]\nname = "table1"\n[train]\nlr = 0.3\niterations = 50\n'
                                 '[data]\ntransforms = ["flip", "normalize"]\n')
    child = write(tmp_path, "child.toml", 'extends = "base.toml"\n[train]\nlr = 0.1\n'
                                          '[data]\ntransforms = ["normalize"]\n')
    spec = load(child, catalogue)
    assert spec["train"]["lr"] == 0.1 and spec["train"]["iterations"] == 50
    assert spec["data"]["transforms"] == ["normalize"]
    assert spec["train"]["batch_size"] == 100  # schema default
    assert [p.name for p in spec.chain] == ["base.toml", "child.toml"]


def test_name_and_question_are_not_inherited(tmp_path, catalogue):
    write(tmp_path, "base.toml", 'name = "base"\nquestion = "Q"\n[model]\nname = "table1"\n')
    child = write(tmp_path, "child.toml", 'extends = "base.toml"\n')
    spec = load(child, catalogue)
    assert spec.name == "child" and spec["question"] == ""


def test_a_file_that_lists_plugins_places_them_after_the_inherited_ones(tmp_path, catalogue):
    write(tmp_path, "base.toml", '[model]\nname = "table1"\n[plugins.init]\nscheme = "kaiming"\n'
                                 '[plugins.grad_magnitude]\n')
    both = write(tmp_path, "both.toml", 'extends = "base.toml"\n[plugins.skip]\nfinal_relu = true\n'
                                        '[plugins.init]\nscheme = "fixup"\n')
    one = write(tmp_path, "one.toml", 'extends = "base.toml"\n[plugins.skip]\n')
    # Fixup needs skip's blocks first: the child's order wins for the plugins it lists.
    assert [n for n in load(both, catalogue).plugin_names() if n != "visdom"] == ["grad_magnitude", "skip", "init"]
    assert [n for n in load(one, catalogue).plugin_names() if n != "visdom"] == ["init", "grad_magnitude", "skip"]
    assert load(both, catalogue)["plugins"]["init"]["scheme"] == "fixup"


def test_title_is_not_inherited_and_not_protocol(tmp_path, catalogue):
    write(tmp_path, "base.toml", 'title = "the base net"\n[model]\nname = "table1"\n')
    child = write(tmp_path, "child.toml", 'extends = "base.toml"\n')
    assert load(child, catalogue)["title"] == ""


def test_overrides_are_typed_and_win(tmp_path, catalogue):
    path = write(tmp_path, "s.toml", '[model]\nname = "table1"\n')
    spec = load(path, catalogue, "train.lr=0.25", "train.nesterov=true", 'data.transforms=["normalize"]',
                "device=cpu", "model.hidden=32")
    assert spec["train"]["lr"] == 0.25 and spec["train"]["nesterov"] is True
    assert spec["data"]["transforms"] == ["normalize"] and spec["device"] == "cpu"
    assert spec["model"]["hidden"] == 32


def test_resolved_spec_round_trips(tmp_path, catalogue):
    spec = load(SPECS / "p1_q4_crop.toml", catalogue)
    saved = write(tmp_path, "resolved.toml", spec.dumps())
    again = load(saved, catalogue)
    assert again.values == dict(spec.values, name="resolved") or again.values == spec.values


def test_ints_widen_to_floats(tmp_path, catalogue):
    path = write(tmp_path, "s.toml", '[model]\nname = "table1"\n[train]\nlr = 1\n')
    assert load(path, catalogue)["train"]["lr"] == 1.0


# ---- errors: each names the file, the key and what is allowed --------------------------------

def test_malformed_toml_gives_line_and_column(tmp_path, catalogue):
    path = write(tmp_path, "bad.toml", '[model]\nname = "table1"\n[train\nlr = 0.1\n')
    err = error(path, catalogue)
    assert err.file == str(path) and err.line == 3 and "malformed TOML" in str(err)


def test_unknown_key_suggests_the_closest(tmp_path, catalogue):
    path = write(tmp_path, "s.toml", '[model]\nname = "table1"\n[train]\nitertions = 10\n')
    err = error(path, catalogue)
    assert err.key == "train.itertions" and "did you mean 'train.iterations'" in str(err)
    assert "iterations" in err.allowed and str(path) in str(err)


def test_unknown_top_level_section(tmp_path, catalogue):
    err = error(write(tmp_path, "s.toml", '[model]\nname = "table1"\n[trian]\nlr = 1\n'), catalogue)
    assert err.key == "trian" and "train" in str(err)


@pytest.mark.parametrize("text, key, fragment", [
    ('[train]\nlr = "fast"\n', "train.lr", "expected a number"),
    ('[train]\niterations = 1.5\n', "train.iterations", "expected an integer"),
    ('[train]\niterations = true\n', "train.iterations", "expected an integer"),
    ('[train]\nbatch_size = 0\n', "train.batch_size", "below the minimum"),
    ('[train]\noptimizer = "lbfgs"\n', "train.optimizer", "not allowed"),
    ('device = "tpu"\n', "device", "not allowed"),
    ('[data]\ntrain = ["data_batch_9"]\n', "data.train", "not allowed"),
    ('[data]\ntransforms = "flip"\n', "data.transforms", "expected a list"),
    ('[train]\ncompile = "fast"\n', "train.compile", "(allowed: false, true, default, reduce-overhead,"),
    ('[train]\ncompile = 1\n', "train.compile", "expected true or false or a string"),
])
def test_wrong_type_or_range(tmp_path, catalogue, text, key, fragment):
    top, _, rest = text.partition("[")
    path = write(tmp_path, "s.toml", top + '[model]\nname = "table1"\n' + ("[" + rest if rest else ""))
    err = error(path, catalogue)
    assert err.key == key and fragment in str(err)


@pytest.mark.parametrize("model, widths, fragment", [
    ("table1", "[]", "expected 1 to 5 elements, got 0"),
    ("table1", "[8, 8, 8, 8, 8, 8]", "expected 1 to 5 elements, got 6"),  # 6 halvings leave no pixel
    ("allconv", "[16, 0, 32]", "0 is below the minimum 1"),
    ("table1", "[true, 32, 64]", "every element must be an integer, got True"),  # Python's bool is an int
])
def test_model_widths_are_checked_before_the_run(tmp_path, catalogue, model, widths, fragment):
    # These once passed `runner validate` and failed at run time with IndexError (exit code 1).
    err = error(write(tmp_path, "s.toml", f'[model]\nname = "{model}"\nwidths = {widths}\n'), catalogue)
    assert err.key == "model.widths" and fragment in str(err)


def test_unknown_model_lists_known_ones(tmp_path, catalogue):
    err = error(write(tmp_path, "s.toml", '[model]\nname = "resnet9000"\n'), catalogue)
    assert err.key == "model.name" and "table1" in err.allowed and "allconv" in err.allowed


def test_missing_model(tmp_path, catalogue):
    err = error(write(tmp_path, "s.toml", "seed = 1\n"), catalogue)
    assert err.key == "model.name"


def test_unknown_model_setting(tmp_path, catalogue):
    err = error(write(tmp_path, "s.toml", '[model]\nname = "table1"\nwidth = 3\n'), catalogue)
    assert err.key == "model.width" and "widths" in err.allowed


def test_unknown_transform_and_duplicates(tmp_path, catalogue):
    err = error(write(tmp_path, "s.toml", '[model]\nname = "table1"\n[data]\ntransforms = ["flop"]\n'), catalogue)
    assert err.key == "data.transforms" and "flip" in err.allowed
    err = error(write(tmp_path, "s.toml", '[model]\nname = "table1"\n[data]\ntransforms = ["flip", "flip"]\n'),
                catalogue)
    assert "twice" in str(err)


def test_transform_settings_without_the_transform(tmp_path, catalogue):
    err = error(write(tmp_path, "s.toml", '[model]\nname = "table1"\n[transforms.pad_crop]\npad = 2\n'), catalogue)
    assert err.key == "transforms.pad_crop"


def test_bad_transform_setting(tmp_path, catalogue):
    err = error(write(tmp_path, "s.toml", '[model]\nname = "table1"\n[data]\ntransforms = ["flip"]\n'
                                          '[transforms.flip]\np = 2.0\n'), catalogue)
    assert err.key == "transforms.flip.p" and "maximum" in str(err)


def test_unknown_plugin_lists_known_ones(tmp_path, catalogue):
    err = error(write(tmp_path, "s.toml", '[model]\nname = "table1"\n[plugins.grad_magnitud]\n'), catalogue)
    assert err.key == "plugins.grad_magnitud" and "augment" in err.allowed


def test_missing_extends(tmp_path, catalogue):
    err = error(write(tmp_path, "s.toml", 'extends = "nowhere.toml"\n'), catalogue)
    assert err.key == "extends" and "nowhere.toml" in str(err)


def test_an_error_names_the_file_or_option_that_set_the_key(tmp_path, catalogue):
    base = write(tmp_path, "base.toml", '[model]\nname = "table1"\n[train]\nlrr = 1\n')
    child = write(tmp_path, "child.toml", 'extends = "base.toml"\n[train]\nlr = 0.2\n')
    err = error(child, catalogue)
    assert err.file == str(base) and err.key == "train.lrr"  # the typo is base's, not child's
    write(tmp_path, "base.toml", '[model]\nname = "table1"\n')
    err = error(child, catalogue, "train.lr=0.1", "train.momentun=0.5")
    assert err.file == "--set train.momentun=0.5" and "did you mean 'train.momentum'" in str(err)
    assert error(child, catalogue, 'train.lr="x"').file == '--set train.lr="x"'


def test_circular_extends(tmp_path, catalogue):
    write(tmp_path, "a.toml", 'extends = "b.toml"\n')
    b = write(tmp_path, "b.toml", 'extends = "a.toml"\n')
    err = error(b, catalogue)
    assert err.key == "extends" and "circular" in str(err) and "a.toml" in str(err)


def test_missing_spec_file(tmp_path, catalogue):
    err = error(tmp_path / "absent.toml", catalogue)
    assert "not found" in str(err)


@pytest.mark.parametrize("override", ["train.lr", "=3", "train..lr=1", "seed.x=1"])
def test_bad_overrides(tmp_path, catalogue, override):
    path = write(tmp_path, "s.toml", '[model]\nname = "table1"\n')
    with pytest.raises(SpecError):
        load(path, catalogue, override)


def test_quick_shrinks_the_run_and_caps_the_attacks_of_enabled_plugins(tmp_path, catalogue):
    from runner.suite.plan import quick_overrides

    fgsm = spec_module.load(SPECS / "p3_q1_fgsm.toml", catalogue, quick_overrides(SPECS / "p3_q1_fgsm.toml", catalogue))
    assert fgsm["train"]["iterations"] == 0  # evaluate-only stays so
    assert fgsm["data"]["test_limit"] == 500 and fgsm["plugins"]["fgsm"]["max_steps"] == 20
    universal = quick_overrides(SPECS / "p3_universal.toml", catalogue)
    texts = [o.text for o in universal]
    assert "plugins.universal.epochs=2" in texts and "train.iterations=12" not in texts
    assert {o.origin for o in universal} == {"quick"}
    # A disabled plugin gets no quick value: it would only be noise in the resolved spec.
    (tmp_path / "off.toml").write_text(f'extends = "{SPECS / "p1_q1_raw.toml"}"\n[plugins.fgsm]\nenabled = false\n')
    assert not [o for o in quick_overrides(tmp_path / "off.toml", catalogue) if o.key.startswith("plugins.")]
    assert "train.iterations=12" in [o.text for o in quick_overrides(tmp_path / "off.toml", catalogue)]


def test_validate_checks_that_required_specs_exist(tmp_path, capsys):
    from runner.cli import main

    path = write(tmp_path, "s.toml", 'requires = ["nope.toml"]\n[model]\nname = "table1"\n')
    assert main(["validate", str(path)]) == 2  # once "ok", and a run failed naming only nope.toml
    err = capsys.readouterr().err
    assert f"{path}: requires: required spec 'nope.toml' not found" in err


def test_a_plugin_setting_applies_only_where_the_spec_uses_the_plugin(catalogue, capsys):
    from runner.cli import main

    override = "plugins.fgsm.max_steps=5"
    raw = load(SPECS / "p1_q1_raw.toml", catalogue, override, "train.lr=0.2")
    assert "fgsm" not in raw.plugin_names()  # once it silently added an attack to the spec
    assert [o.text for o in raw.overrides] == ["train.lr=0.2"] and raw.unused_overrides == [override]
    attack = load(SPECS / "p3_q1_fgsm.toml", catalogue, override)
    assert attack["plugins"]["fgsm"]["max_steps"] == 5 and attack.unused_overrides == []
    added = load(SPECS / "p1_q1_raw.toml", catalogue, "plugins.grad_magnitude.enabled=true",
                 "plugins.grad_magnitude.every=5")
    assert "grad_magnitude" in added.plugin_names() and added["plugins"]["grad_magnitude"]["every"] == 5
    # visdom is on unless turned off, so its settings apply to a spec with no [plugins.visdom].
    assert load(SPECS / "p1_q1_raw.toml", catalogue, 'plugins.visdom.env="x"')["plugins"]["visdom"]["env"] == "x"

    assert main(["validate", str(SPECS / "p1_q1_raw.toml"), "--set", override]) == 2
    assert "--set plugins.fgsm.max_steps=5: plugins.fgsm: no spec given uses plugin 'fgsm'" in capsys.readouterr().err
    assert main(["validate", str(SPECS / "p1_q1_raw.toml"), str(SPECS / "p3_q1_fgsm.toml"), "--set", override]) == 0


def test_a_job_carries_the_overrides_its_own_spec_was_loaded_with(catalogue, tmp_path):
    # --with-deps loads the specs it adds without the user's --set; under --jobs they once got them all.
    from runner.spec.overrides import Override
    from runner.suite import plan as suite

    plan, _ = suite.build([SPECS / "p3_q1_fgsm.toml"], catalogue, options=suite.RunOptions(out=str(tmp_path)),
                          overrides=["plugins.fgsm.max_steps=5"], with_deps=True, device="cpu")
    jobs = {job.name: job for job in plan.jobs}
    assert list(jobs) == ["p1_q4_crop", "p3_q1_fgsm"]  # the model first
    assert Override("plugins.fgsm.max_steps", "5", "set") in jobs["p3_q1_fgsm"].overrides
    assert jobs["p1_q4_crop"].overrides == (Override("device", '"cpu"', "device"),)  # where it runs holds for all
    # A job loads in a worker exactly as here.
    assert jobs["p3_q1_fgsm"].load(catalogue)["plugins"]["fgsm"]["max_steps"] == 5


def test_sweeps_expand_into_a_grid_and_arrays_stay_whole():
    from runner.suite.plan import split_values, sweep_points

    texts = lambda points: [[o.text for o in point] for point in points]  # noqa: E731
    points = sweep_points(["train.lr=0.01,0.05", "seed=1"])
    assert texts(points) == [["train.lr=0.01", "seed=1"], ["train.lr=0.05", "seed=1"]]
    # Each swept value records that it is a sweep's; a single value stays the user's --set.
    assert [[o.origin for o in point] for point in points] == [["sweep", "set"], ["sweep", "set"]]
    grid = texts(sweep_points(["train.lr=0.1,0.2", "train.batch_size=50,100,200"]))
    assert len(grid) == 6 and ["train.lr=0.2", "train.batch_size=200"] in grid
    assert split_values("[16,32],[64,128]") == ["[16,32]", "[64,128]"]
    assert split_values("[16, 32]") == ["[16, 32]"] and split_values('"a,b"') == ['"a,b"']


@pytest.mark.parametrize("overrides, fragment", [
    (["train.momentum=0"], "Nesterov momentum needs a momentum above 0"),
    (['train.optimizer="adam"', "train.momentum=1.0"], "adam's beta1, which must be below 1"),
])
def test_optimizer_settings_the_optimizer_would_reject_together(overrides, fragment, catalogue):
    # Each value is in range alone; torch would raise a bare ValueError at the run's start.
    err = error(SPECS / "p1_q1_raw.toml", catalogue, *overrides)
    assert err.key == "train.momentum" and fragment in str(err) and err.file == f"--set {overrides[-1]}"


def test_plugin_checks_run_when_the_spec_loads(tmp_path, catalogue):
    # The attack needs train.iterations = 0: a suite must learn that before its first run, not hours in.
    err = error(SPECS / "p3_q1_fgsm.toml", catalogue, "train.iterations=5")
    assert err.key == "train.iterations" and err.file == "--set train.iterations=5" and "fgsm" in str(err)
    spec = write(tmp_path, "attack.toml", f'extends = "{SPECS / "base/part1.toml"}"\n[plugins.fgsm]\n')
    err = error(spec, catalogue)
    assert err.file == str(spec) and err.key == "plugins.fgsm.source"  # the spec given, not the base's [model]
    assert "names no [model]" in str(err)
    err = error(SPECS / "p2_fix_fixup.toml", catalogue, "plugins.skip.final_relu=false")
    assert err.key == "plugins.skip.final_relu" and "never train" in str(err)


def test_data_root_is_relative_to_the_spec_that_names_it(tmp_path, catalogue, monkeypatch):
    write(tmp_path, "specs/base.toml", '[model]\nname = "table1"\n[data]\nroot = "../cifar"\n')
    child = write(tmp_path, "specs/sub/child.toml", 'extends = "../base.toml"\n')
    monkeypatch.chdir(tmp_path / "specs" / "sub")
    assert load(child, catalogue)["data"]["root"] == str(tmp_path / "cifar")
    # A --set value is the command line's: relative to where the command runs.
    assert load(child, catalogue, 'data.root="here"')["data"]["root"] == "here"


@pytest.mark.parametrize("table, fragment", [
    ('[data]\ntransforms = ["normalise"]\n', "unknown transform 'normalise'; did you mean 'normalize'?"),
    ("[plugins.grad_magnitud]\n", "unknown plugin 'grad_magnitud'; did you mean 'grad_magnitude'?"),
    ('[model]\nname = "allcnv"\n', "unknown model 'allcnv'; did you mean 'allconv'?"),
])
def test_misspelled_names_get_a_suggestion(tmp_path, catalogue, table, fragment):
    path = write(tmp_path, "s.toml", f'extends = "{SPECS / "p1_q1_raw.toml"}"\n{table}')
    assert fragment in str(error(path, catalogue))


def test_validate_says_ok_only_when_the_set_suits_the_spec(capsys):
    from runner.cli import main

    assert main(["validate", "--set", "plugins.grad_magnitude.every=5", str(SPECS / "p1_q1_raw.toml")]) == 2
    captured = capsys.readouterr()
    assert "ok" not in captured.out and "no spec given uses plugin 'grad_magnitude'" in captured.err


def test_the_planning_cache_rereads_an_edited_spec_and_is_per_catalogue(tmp_path):
    # Planning loads a spec many times and caches it: an edited file must be read afresh, and a
    # later catalogue (whose id may be an earlier one's) must not get specs validated under another.
    import os

    from runner.plugin_host.catalogue import Catalogue
    from runner.suite.plan import load_spec

    spec = write(tmp_path, "mine.toml", f'extends = "{SPECS / "p1_q1_raw.toml"}"\n[train]\nlr = 0.02\n')
    first = Catalogue.default()
    assert load_spec(spec, first)["train"]["lr"] == 0.02
    assert load_spec(spec, first) is load_spec(spec, first)  # unchanged: the same object
    spec.write_text(spec.read_text().replace("lr = 0.02", "lr = 0.03"))
    os.utime(spec, ns=(spec.stat().st_atime_ns, spec.stat().st_mtime_ns + 1_000_000))
    assert load_spec(spec, first)["train"]["lr"] == 0.03
    before = load_spec(spec, first)
    del first
    second = Catalogue.default()
    assert load_spec(spec, second) is not before
