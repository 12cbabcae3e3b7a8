"""Property: the spec loader returns a valid spec or raises SpecError, never anything else."""
import string

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from runner import SpecError
from runner.plugin_host.catalogue import Catalogue
from runner.spec import loading as spec_module

CATALOGUE = Catalogue.default()
VALID = '''seed = 1
[model]
name = "table1"
[data]
transforms = ["flip", "normalize", "pad_crop"]
[transforms.pad_crop]
pad = 4
[train]
lr = 0.1
iterations = 20
'''
KEYS = ["seed", "device", "model", "name", "data", "train", "lr", "transforms", "plugins", "extends", "requires",
        "iterations", "pad", "p", "widths", "skip", "grad_magnitude", "flip", "enabled", "path"]
VALUES = ["1", "-1", "0.5", "true", '"x"', '"table1"', "[]", '["flip"]', "[1, 2]", "{}", "{ a = 1 }", '"cpu"',
          "1e400", "nan", '"../x.toml"']


def load_text(tmp_path, text):
    path = tmp_path / "fuzz.toml"
    path.write_bytes(text.encode("utf-8", "replace"))
    try:
        spec = spec_module.load(path, CATALOGUE)
    except SpecError:
        return None
    assert spec.name and spec["model"]["name"] in CATALOGUE.models
    return spec


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=string.printable, max_size=200))
def test_random_text(tmp_path, text):
    load_text(tmp_path, text)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 12), st.sampled_from(["delete", "insert", "replace"]),
                          st.sampled_from(KEYS + VALUES + ["[", "]", "=", "\n", ".", '"'])), max_size=6))
@example([(0, "insert", "plugins")])  # `plugins = 1` once crashed the loader with AttributeError
def test_mutated_valid_spec(tmp_path, edits):
    lines = VALID.splitlines()
    for index, action, token in edits:
        i = index % (len(lines) + 1)
        if action == "delete" and i < len(lines):
            del lines[i]
        elif action == "insert":
            lines.insert(i, token if token.startswith("[") else f"{token} = {VALUES[index % len(VALUES)]}")
        elif i < len(lines):
            key = lines[i].split("=")[0].strip()
            lines[i] = f"{key} = {token}" if "=" in lines[i] else token
    load_text(tmp_path, "\n".join(lines) + "\n")
