"""Every hook a runner plugin can implement: the one page a plugin author reads.

A plugin is a module (or any object) with functions marked `@runner.hookimpl`, named after the
hooks below; it takes only the arguments it needs. It declares its settings, if any, with one
`runner.Plugin(settings=...)` object (runner/plugin_host/declaration.py, docs/plugins.md).

Two kinds of hooks:
- Registry hooks (`register_*`) run once for every installed plugin, whether a spec enables it
  or not, so models and transforms from any plugin can be named in any spec.
- Run hooks run only for the plugins a spec enables (`[plugins.<name>]`), in the order the spec
  lists them. Two arguments are each plugin's own: `settings`, its validated settings object
  (`settings.every`), and `state`, a namespace it keeps for the run (`state.sender = ...` in
  attach, read back in run_finished).

Hooks are called through pluggy, so `@hookimpl(tryfirst=True)`, `trylast=True` and
`wrapper=True` (a generator around the other plugins' calls: `result = yield`) work as in pytest.
`change_model` is the exception: its calls chain (each plugin gets the model the previous one
returned), so it is called one plugin at a time, in spec order.

Built-in plugins live in the repository's plugins/ folder (installed as the package
runner.plugins) and the runner/ modules that register core models; they register exactly like
third-party ones, which load from the `runner.plugins` entry-point group or from a file a spec
names (`[plugins.mine] path = "mine.py"`).
"""
import pluggy

hookspec = pluggy.HookspecMarker("runner")
hookimpl = pluggy.HookimplMarker("runner")


@hookspec
def register_models(register):
    """Add models: register(name, factory, settings={key: Setting}, help="").

    factory(**settings) returns an nn.Module taking float images (N, 3, 32, 32) and returning
    logits; the keys of `settings` are the spec's `[model]` table besides `name`.
    """


@hookspec
def register_transforms(register):
    """Add batch transforms: register(name, factory, settings={...}, train_only=False, help="").

    factory(settings, train_images) returns an nn.Module applied to whole float batches
    (pixel values 0-255 before any normalization). `train_images` is the uint8 training tensor,
    for transforms that need statistics. A spec's `data.transforms` list sets their order;
    train_only transforms are skipped at evaluation and in the saved model.
    """


@hookspec
def configure(spec, settings):
    """Check the resolved spec when it loads (`runner validate`, a suite's planning, a run's start),
    before any data; raise SpecError to refuse it."""


@hookspec
def change_model(model, run, settings, state):
    """Return a replacement model (or None to keep it, or change it in place).

    Called after the model is built, before the optimizer sees its parameters: wrap layers into
    residual blocks, re-initialize weights, and the like.
    """


@hookspec
def attach(trainer, evaluator, run, settings, state):
    """Attach Ignite event handlers to the trainer or evaluator.

    Besides Ignite's events, the trainer fires `runner.TrainEvents.BACKWARD_COMPLETED` after
    the backward pass and before the optimizer step: gradients are there to read or change.
    `run` holds the spec, model, device, run directory and the metrics log.
    """


@hookspec
def show_images(run, window, images, caption, state):
    """Show a grid of uint8 images (N, 3, H, W) live, one window per `window` name (a live-plot
    plugin implements it; others call `run.show_images(window, images, caption)`)."""


@hookspec
def run_finished(run, results, settings, state):
    """The run has trained and been evaluated; write extra artifacts or add to `results`.

    `results` is the dict that becomes summary.json; keys a plugin adds appear there. A plugin
    whose run's result is not the test accuracy (an attack's fooled share) sets
    `results["headline"] = {"name": "fooled", "value": 0.99, "seconds": ..., "per_second": ...}`:
    `runner ls`, the suite's table and its progress lines show that instead (runner/results.py).
    """


@hookspec
def describe_setup(settings):
    """What this plugin changes of a run's training setup, in words, for the report's table of
    each part's setup: {row: text}, such as {"initialization": "He normal (fan_in, ReLU gain)"}.

    A run hook (the enabled plugins, each with its settings). Plugins that only watch a run
    (live plots, gradient logging) leave it out, and so stay out of the table.
    """


@hookspec
def report_sections(runs, specs):
    """Add to `runner report`: return a list of `runner.report.Section` (or None).

    Called once for every installed plugin, like the registry hooks, whichever specs enable it.
    `runs` (a `runner.report.Runs`) maps each reported spec's name to its `SpecRuns`, in question
    order: `.runs` (one summary.json per seed, lowest seed first), `.representative` (that first
    run, which single numbers and figures come from), `.spec` (its resolved spec.toml), `.trained`,
    `.title` (its name in words, for captions), `.label` ("P2 Q3"), `.figure(file_name)` and
    `.metrics()` (the representative's metrics.csv as columns, to draw a figure at print size);
    `runs.workdir` is a temporary folder for figures drawn now. `specs` lists the `SpecRuns` of the
    reported specs that enable this plugin (`runs.using(name)` asks for another plugin's).

    `Section(spec=name, blocks=[...], fields={...})` adds blocks (`Paragraph`, `Table`, `Figure`)
    to that spec's section and fields to its explanation template (`{name.key}`); a Section without
    `spec` is a section of its own, among the studies beyond the questions.
    """
