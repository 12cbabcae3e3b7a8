"""Load a TOML spec: follow `extends`, apply `--set` overrides, validate every key.

Loading happens in two steps because a spec's model, transforms and plugins are validated
against the plugin catalogue, which may itself grow from plugin files the spec names:
`read()` gives the merged raw table, `validate()` checks it against the schema and catalogue.
"""
from __future__ import annotations

import copy
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import tomli_w

from ..errors import SpecError
from . import schema
from .known import SpecCatalogue
from .overrides import Override, of
from .schema import plugin_files

# A spec folder's file that is no spec: what `runner report` prints about the specs (runner/report/config.py).
REPORT_CONFIG = "report.toml"


class Table(dict):
    """A spec table whose keys read as attributes too: spec.train.lr is spec["train"]["lr"]."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"spec table has no key {key!r}") from None


def _tables(values: dict) -> Table:
    return Table({key: _tables(value) if isinstance(value, dict) else value for key, value in values.items()})


@dataclass
class Spec:
    """A fully resolved spec: every key present, defaults filled in. Sections read as attributes
    (spec.train.iterations, spec.data.transforms) or as items (spec["train"]["iterations"])."""

    path: Path
    values: dict
    chain: list[Path] = field(default_factory=list)  # the file and every file it extends
    overrides: list[Override] = field(default_factory=list)  # those applied, in order (runner/spec/overrides.py)
    unused_overrides: list[str] = field(default_factory=list)  # plugin settings for a plugin it does not use
    reads: dict[str, str] = field(default_factory=dict)  # specs whose runs its plugins read -> the setting naming each

    @property
    def name(self) -> str:
        return self.values["name"]

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def __getattr__(self, key: str) -> Any:
        if key.startswith("__") or key == "values":  # copying and unpickling look before values exists
            raise AttributeError(key)
        try:
            return self.values[key]
        except KeyError:
            raise AttributeError(f"spec has no key {key!r}") from None

    def get(self, dotted: str, default=None) -> Any:
        node = self.values
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def plugin_names(self) -> list[str]:
        return [name for name, table in self.values["plugins"].items() if table.get("enabled", True)]

    def enabled_plugins(self) -> dict[str, dict]:
        """{name: validated settings table} of the enabled plugins, in the spec's order."""
        return {name: self.values["plugins"][name] for name in self.plugin_names()}

    def dumps(self) -> str:
        return tomli_w.dumps(self.values)

    def origin(self, key: str | None) -> str:
        """Who set a key: the --set naming it, else the last file of the chain holding it, else this spec."""
        return self.set_by(key) or str(self.path)

    def set_by(self, key: str | None) -> str | None:
        """The override naming a key (its `where`: "--set train.lr=0.05", "--quick (...)"), else the
        last file of the chain holding it; None for a default."""
        return _origin(key, self.chain, self.overrides)


def _parse(path: Path) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError("spec file not found", file=path) from None
    except OSError as exc:
        raise SpecError(f"cannot read spec: {exc.strerror}", file=path) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # Python 3.11's TOMLDecodeError has the position only in its text: "... (at line 3, column 7)".
        found = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        line, column = (int(found[1]), int(found[2])) if found else (None, None)
        message = str(exc)[:found.start()].strip() if found else str(exc)
        raise SpecError(f"malformed TOML: {message}", file=path, line=line, column=column) from None
    except UnicodeDecodeError:
        raise SpecError("malformed TOML: not UTF-8 text", file=path) from None


def merge(base: dict, override: dict) -> dict:
    """Deep-merge tables; anything else (lists included) in override replaces base."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# Keys that describe a spec file rather than what it runs: not inherited, and a change to them
# leaves earlier runs of the spec its runs.
DESCRIPTIVE = ("name", "question", "title")


def _resolve(path: Path, seen: tuple[Path, ...]) -> tuple[dict, list[Path]]:
    path = path.resolve()
    if path in seen:
        cycle = " -> ".join(p.name for p in seen + (path,))
        raise SpecError(f"circular extends: {cycle}", file=seen[-1], key="extends")
    table = _parse(path)
    _anchor_paths(table, path)
    parents = table.pop("extends", [])
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise SpecError("expected a path or a list of paths", file=path, key="extends")
    merged: dict = {}
    chain: list[Path] = []
    for parent in parents:
        parent_path = path.parent / parent
        if not parent_path.is_file():
            raise SpecError(f"extended spec {parent!r} not found (looked for {parent_path})", file=path, key="extends")
        parent_table, parent_chain = _resolve(parent_path, seen + (path,))
        merged = merge(merged, parent_table)
        chain += parent_chain
    # `name`, `question` and `title` describe one file; they are not inherited.
    for key in DESCRIPTIVE:
        merged.pop(key, None)
    return _plugins_in_file_order(merge(merged, table), table), chain + [path]


def _plugins_in_file_order(merged: dict, table: dict) -> dict:
    """Plugins run in [plugins.*] order, and a file that lists a plugin places it: the tables it
    lists come after the inherited ones, in its order (a spec that lists [plugins.skip] then
    [plugins.init] gets skip's blocks before init, whatever its parents listed first)."""
    plugins, own = merged.get("plugins"), table.get("plugins")
    if isinstance(plugins, dict) and isinstance(own, dict):
        merged["plugins"] = {**{k: v for k, v in plugins.items() if k not in own},
                             **{k: plugins[k] for k in own if k in plugins}}
    return merged


def _anchor_paths(table: dict, path: Path) -> None:
    """Paths a spec names are relative to the file that names them, whoever extends it."""
    for _, settings in plugin_files(table):
        settings["path"] = str((path.parent / settings["path"]).resolve())
    if isinstance(table.get("requires"), list):
        table["requires"] = [str((path.parent / r).resolve()) if isinstance(r, str) else r for r in table["requires"]]
    data = table.get("data")
    if isinstance(data, dict) and isinstance(data.get("root"), str) and data["root"]:
        # A run (or runner resume) from another folder must find the same data.
        data["root"] = str((path.parent / Path(data["root"]).expanduser()).resolve())


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.lr=0.1' -> (['train', 'lr'], 0.1); the value is read as TOML, else as a string."""
    if "=" not in text:
        raise SpecError(f"--set {text!r}: expected key.path=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise SpecError(f"--set {text!r}: empty key")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return parts, value


def read(path: Path | str, overrides: Iterable[Override | str] = (),
         default_plugins: Iterable[str] = ()) -> tuple[dict, list[Path], list[str]]:
    """The merged raw table of a spec, its chain of files, and the overrides it had no use for.

    An override of a plugin's setting (plugins.fgsm.max_steps=5) applies only where the spec uses
    that plugin (it has a [plugins.fgsm] table, or the plugin is in default_plugins, on unless
    turned off): `runner specs/ --set plugins.fgsm.max_steps=5` must not add an attack to every
    spec. plugins.NAME.enabled=true, or a whole table (plugins.NAME={}), adds a plugin."""
    path = Path(path)
    table, chain = _resolve(path, ())
    unused = []
    for text in (o.text for o in of(overrides)):
        parts, value = parse_override(text)
        plugins = table.get("plugins")
        if (len(parts) > 2 and parts[0] == "plugins" and parts[2] != "enabled" and parts[1] not in default_plugins
                and not (isinstance(plugins, dict) and parts[1] in plugins)):
            unused.append(text)
            continue
        node = table
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SpecError(f"--set {text!r}: {part!r} is not a table", file=path, key=".".join(parts))
        node[parts[-1]] = value
    table.setdefault("name", path.stem)
    return table, chain, unused


def validate(path, table: dict, catalogue, chain=()) -> Spec:
    """Check every key of a merged table; fill in defaults. `catalogue` knows models, ops, plugins."""
    file = Path(path)
    known = set(schema.TOP) | set(schema.SECTIONS) | set(schema.OPEN_SECTIONS)
    for key in table:
        if key not in known:
            raise schema.unknown_key(key, known, file=file)
    top = schema.validate_table({k: v for k, v in table.items() if k in schema.TOP}, schema.TOP, file=file, prefix="")
    values = dict(top, name=top["name"] or file.stem)
    for section, section_schema in schema.SECTIONS.items():
        values[section] = schema.validate_table(table.get(section, {}), section_schema, file=file,
                                                prefix=section + ".")

    plugin_tables = table.get("plugins", {})
    if not isinstance(plugin_tables, dict):
        raise SpecError("expected a table with one table per plugin", file=file, key="plugins")
    values["plugins"] = {}
    for name, settings in plugin_tables.items():
        prefix = f"plugins.{name}."
        if not isinstance(settings, dict):
            raise SpecError("expected a table of plugin settings (an empty one enables the plugin)",
                            file=file, key=prefix.rstrip("."))
        if name not in catalogue.plugins:
            raise SpecError(f"unknown plugin {name!r}{schema.suggestion(name, catalogue.plugins)}", file=file,
                            key="plugins." + name, allowed=sorted(catalogue.plugins))
        values["plugins"][name] = schema.validate_table(settings, catalogue.table_schema(name), file=file,
                                                        prefix=prefix)
    # Plugins that are on unless a spec turns them off (`[plugins.<name>] enabled = false`).
    for name in sorted(catalogue.default_enabled()):
        if name not in values["plugins"]:
            values["plugins"][name] = schema.validate_table({}, catalogue.table_schema(name), file=file,
                                                            prefix=f"plugins.{name}.")
    source = catalogue.model_source(values["plugins"])
    if source is None:
        values["model"] = _validated_model(table, catalogue, file)
    else:
        _check_model_from_run(table, values, source, file)
    _check_optimizer(values["train"], file)

    ops = values["data"]["transforms"]
    for op in ops:
        if op not in catalogue.transforms:
            raise SpecError(f"unknown transform {op!r}{schema.suggestion(op, catalogue.transforms)}", file=file,
                            key="data.transforms",
                            allowed=sorted(catalogue.transforms))
    if len(set(ops)) != len(ops):
        raise SpecError("a transform is listed twice", file=file, key="data.transforms")
    op_tables = table.get("transforms", {})
    if not isinstance(op_tables, dict):
        raise SpecError("expected a table of transform settings", file=file, key="transforms")
    for op in op_tables:
        if op not in ops:
            raise SpecError(f"settings for {op!r}, which data.transforms does not list", file=file,
                            key=f"transforms.{op}", allowed=ops)
    values["transforms"] = {op: schema.validate_table(op_tables.get(op, {}), catalogue.transforms[op].settings,
                                                      file=file, prefix=f"transforms.{op}.") for op in ops}
    if "search" in table:  # only a spec that has one: every other spec resolves as it did
        values["search"] = _validated_search(table["search"], values, catalogue, file, chain)

    return Spec(path=file, values=_tables(values), chain=list(chain), reads=catalogue.reads(values["plugins"]))


def _validated_model(table: dict, catalogue, file: Path) -> dict:
    model = table.get("model")
    if not isinstance(model, dict) or "name" not in model:
        raise SpecError("every spec names a model", file=file, key="model.name", allowed=sorted(catalogue.models))
    if not isinstance(model["name"], str):
        raise SpecError(f"expected a model name, got {model['name']!r}", file=file, key="model.name",
                        allowed=sorted(catalogue.models))
    entry = catalogue.models.get(model["name"])
    if entry is None:
        raise SpecError(f"unknown model {model['name']!r}{schema.suggestion(model['name'], catalogue.models)}",
                        file=file, key="model.name", allowed=sorted(catalogue.models))
    params = schema.validate_table({k: v for k, v in model.items() if k != "name"}, entry.settings,
                                   file=file, prefix="model.")
    return {"name": model["name"], **params}


def _check_model_from_run(table: dict, values: dict, source: tuple[str, str], file: Path) -> None:
    """A spec whose model is another spec's trained model (an attack's source) trains nothing and
    names no model; the loaded model carries its own normalization, so no transforms either."""
    plugin, key = source
    setting = f"plugins.{plugin}.{key}"
    if "model" in table:
        # Keyed to the plugin's setting: the spec enabling the plugin is where to look, even when the
        # [model] comes from a file it extends.
        raise SpecError("makes another spec's trained model this run's model, so the spec names no [model]: "
                        "remove it (or stop extending a spec that trains)", file=file, key=setting)
    if table.get("train", {}).get("iterations", 0) != 0:
        raise SpecError(f"nothing may train here: the model is the trained model of the spec {setting} names "
                        f"(leave train.iterations out)", file=file, key="train.iterations")
    values["train"]["iterations"] = 0
    if values["data"]["transforms"]:
        raise SpecError(f"the trained model {setting} names carries its own transforms; leave data.transforms "
                        f"empty", file=file, key="data.transforms")


def _validated_search(search, values: dict, catalogue, file: Path, chain) -> dict:
    """[search] (runner/suite/search.py): its settings, then each dotted key a space over a setting the
    resolved spec has, its bounds or choices valid values of that setting. A bad space fails when
    the spec loads, not trials later, naming the file that holds it."""
    if not isinstance(search, dict):
        raise SpecError("expected a table of search settings and spaces", file=file, key="search")
    settings = schema.validate_table({k: v for k, v in search.items() if "." not in k}, schema.SEARCH, file=file,
                                     prefix="search.")
    spaces = {}
    for key, space in search.items():
        if "." in key:
            where = next((f for f in reversed(list(chain)) if key in (_parse(f).get("search") or {})), file)
            spaces[key] = _checked_space(key, space, _searched_setting(key, values, catalogue, where), where)
    if not spaces:
        raise SpecError('no space to search: add one, e.g. "train.lr" = { log = [1e-3, 0.1] }', file=file,
                        key="search")
    continuous = [key for key, space in spaces.items() if "log" in space or "range" in space]
    if settings["sampler"] == "grid" and continuous:
        raise SpecError(f"the grid sampler needs every space a choice or an int range; {continuous[0]} is "
                        f"continuous (or use sampler = \"tpe\")", file=file, key="search.sampler")
    if settings["pruner"] != "none" and settings["metric"] != "validation_accuracy":
        raise SpecError(f"trials report the validation accuracy to the pruner, so pruning needs metric = "
                        f"\"validation_accuracy\" (or pruner = \"none\" for {settings['metric']!r})", file=file,
                        key="search.pruner")
    return {**settings, **spaces}


def _searched_setting(key: str, values: dict, catalogue, file) -> schema.Setting:
    """The Setting a [search] space's key names in the resolved spec; a SpecError if it has none."""
    section, _, rest = key.partition(".")
    found = None
    if section in schema.SECTIONS:
        found = schema.SECTIONS[section].get(rest)
    elif section == "model" and "name" in values.get("model", {}):
        found = catalogue.models[values["model"]["name"]].settings.get(rest)
    elif section in ("plugins", "transforms") and "." in rest:
        name, _, setting = rest.partition(".")
        if section == "plugins" and name in values["plugins"]:
            found = catalogue.table_schema(name).get(setting)
        elif section == "transforms" and name in values["transforms"]:
            found = catalogue.transforms[name].settings.get(setting)
    if found is None:
        name = rest.partition(".")[0]
        if section in ("plugins", "transforms") and name not in values.get(section, {}):
            hint = f" ({section[:-1]} {name!r} is not in the spec: add it to search its settings)"
        else:
            hint = schema.suggestion(key, [k for k in _dotted(values) if not k.startswith("search.")])
        raise SpecError(f"unknown key: the spec has no setting {key!r} to search{hint}", file=file,
                        key=f'search."{key}"')
    return found


def _dotted(values: dict, prefix: str = "") -> list[str]:
    return [k for key, value in values.items()
            for k in (_dotted(value, f"{prefix}{key}.") if isinstance(value, dict) else [prefix + key])]


def _checked_space(key: str, space, setting: schema.Setting, file) -> dict:
    """{kind: bounds or choices}, each bound or choice a valid value of the setting."""
    where = f'search."{key}"'
    shapes = "{ log = [low, high] }, { range = [low, high] }, { int = [low, high] } or { choice = [a, b, ...] }"
    if not isinstance(space, dict) or len(space) != 1 or next(iter(space)) not in schema.SPACE_KINDS:
        raise SpecError(f"expected one of {shapes}, got {space!r}", file=file, key=where)
    kind, given = next(iter(space.items()))
    if not isinstance(given, list) or not given:
        raise SpecError(f"{kind}: expected a non-empty list, got {given!r}", file=file, key=where)
    if kind == "choice":
        return {kind: [schema.check_value(setting, value, file=file, key=f"{where}: choice {value!r}")
                       for value in given]}
    number = int if kind == "int" else (int, float)
    if len(given) != 2 or not all(isinstance(v, number) and not isinstance(v, bool) for v in given):
        raise SpecError(f"{kind}: expected [low, high], two {'integers' if kind == 'int' else 'numbers'}, got "
                        f"{given!r}", file=file, key=where)
    if setting.kind not in (int, float):
        raise SpecError(f"{kind}: the setting takes {'a list' if setting.kind is list else repr(setting.default)}-like "
                        f"values, not numbers in a range: use {{ choice = [...] }}", file=file, key=where)
    if setting.kind is int and kind != "int":
        raise SpecError(f"{kind}: the setting is an integer: use {{ int = [{given[0]}, {given[1]}] }}", file=file,
                        key=where)
    low, high = given
    if low >= high:
        raise SpecError(f"{kind}: empty range [{low}, {high}]: low must be below high", file=file, key=where)
    if kind == "log" and low <= 0:
        raise SpecError(f"log: the log of a non-positive bound {low}: a log range needs low > 0 (or use range)",
                        file=file, key=where)
    bounds = [schema.check_value(setting, float(v) if setting.kind is float else v, file=file,
                                 key=f"{where}: {kind} bound") for v in given]
    return {kind: bounds}


def _check_optimizer(train: dict, file: Path) -> None:
    """Settings each valid alone that the optimizer would reject together (torch raises a bare ValueError)."""
    if train["optimizer"] == "sgd" and train["nesterov"] and train["momentum"] == 0:
        raise SpecError("Nesterov momentum needs a momentum above 0: set train.momentum (e.g. 0.9) or "
                        "train.nesterov = false", file=file, key="train.momentum")
    if train["optimizer"] != "sgd" and train["momentum"] >= 1:
        raise SpecError(f"train.momentum is {train['optimizer']}'s beta1, which must be below 1", file=file,
                        key="train.momentum")



def load(path: Path | str, catalogue: SpecCatalogue, overrides: Iterable[Override | str] = ()) -> Spec:
    """Read, merge and validate a spec; plugin files it names join the catalogue (runner/plugin_host/catalogue.py:
    `Catalogue.default()`) first."""
    overrides = of(overrides)
    table, chain, unused = read(path, overrides, catalogue.default_enabled())
    catalogue.add_spec_files(Path(path), table)
    try:
        spec = validate(path, table, catalogue, chain)
    except SpecError as exc:
        origin = _origin(exc.key, chain, overrides)
        raise (exc.in_file(origin) if origin else exc) from None
    try:
        # The plugins' own checks (an attack needs train.iterations = 0, ...): a spec that would
        # fail at its run's start fails here, before a suite spends hours on the specs before it.
        catalogue.hooks(spec.enabled_plugins()).configure(spec=spec)
    except SpecError as exc:
        origin = _origin(exc.key, [], overrides)  # a --set, else the spec given (not the base holding a default)
        raise exc.in_file(origin or Path(path)) from None
    spec.overrides = [o for o in overrides if o.text not in unused]
    spec.unused_overrides = unused
    return spec


def differences(a: dict, b: dict, both: bool = True, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, value in a, value in b) of each setting in which two spec tables differ; without
    `both`, keys only one of them has are not differences (an older spec.toml's)."""
    found = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            found += differences(x, y, both, f"{prefix}{key}.")
        elif x != y and (both or (key in a and key in b)):
            found.append((prefix + key, x, y))
    return found


def check_overrides_used(specs: list[Spec], overrides) -> None:
    """A --set that no given spec had a use for is a mistake (a plugin none of them uses)."""
    for text in overrides:
        if specs and all(text in spec.unused_overrides for spec in specs):
            plugin = text.split(".")[1]
            raise SpecError(f"no spec given uses plugin {plugin!r}, so this setting would change nothing; "
                            f"to add the plugin, also --set plugins.{plugin}.enabled=true",
                            file=f"--set {text}", key=f"plugins.{plugin}")


def _origin(key: str | None, chain: list[Path], overrides) -> str | None:
    """Who set a merged key: the last --set naming it, else the last file in the chain holding it.

    validate() sees one merged table and blames the spec given; a typo in a file it extends, or in
    --set, is that file's or that option's."""
    if not key:
        return None
    parts = key.split(".")
    for override in reversed(of(overrides)):
        if override.key.split(".")[:len(parts)] == parts:
            return override.where
    for file in reversed(chain):
        node: object = _parse(file)  # a table, then whatever the key's parts lead to
        for part in parts:
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            return str(file)
    return None
