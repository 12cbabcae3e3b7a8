"""`runner visdom`: a local Visdom server that needs no internet, its web assets, and replay.

runner visdom [--port N] [--host H]      serve on 127.0.0.1:8097 (default) until Ctrl-C
runner visdom install-assets             fetch visdom's JavaScript, CSS and fonts from npm once
runner visdom replay RUN_DIR [--port N]  send a finished run's recorded plots to a server

visdom 0.2.4's own start (`python -m visdom.server`) downloads its assets from CDNs; here the
same files come from npm registry packages, at the versions its download script names
(visdom/server/build.py), into the paths it expects in visdom's static folder, with the
version.built stamp that makes build.py skip downloading (so even visdom's own start then stays
offline). `runner visdom` starts the server without that download step at all, and refuses to
start, naming what is missing, when an asset is not there.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from urllib.parse import quote, urlparse

from .errors import RunnerError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8097
LOG_NAME = "visdom.jsonl"  # what the visdom plugin records in every run folder, and replay reads

# npm package -> version, as in visdom 0.2.4's build.py (d3 v3 there is d3js.org's latest 3.x).
PACKAGES = {
    "jquery": "3.1.1",
    "bootstrap": "3.3.7",
    "react": "16.2.0",
    "react-dom": "16.2.0",
    "react-modal": "3.1.10",
    "plotly.js-dist-min": "2.11.1",
    "sjcl": "1.0.7",
    "layout-bin-packer": "1.4.0",
    "d3": "3.5.17",
    "d3-selection-multi": "1.0.1",
    "save-svg-as-png": "1.4.17",
    "react-resizable": "1.4.6",
    "react-grid-layout": "0.16.3",
    "classnames": "2.2.5",
    "mathjax": "2.7.5",
}

_BOOTSTRAP_FONTS = [f"glyphicons-halflings-regular.{ext}" for ext in ("eot", "woff2", "woff", "ttf", "svg")]
_MATHJAX = ["MathJax.js", "config/Safe.js", "config/TeX-AMS-MML_HTMLorMML.js", "extensions/Safe.js",
            "jax/output/SVG/fonts/TeX/fontdata.js", "jax/output/SVG/jax.js",
            "jax/output/SVG/fonts/TeX/Size1/Regular/Main.js", "jax/output/SVG/config.js"]

# (package, file inside the package, path under visdom/static): build.py's targets, one by one.
ASSETS = [
    ("jquery", "dist/jquery.min.js", "js/jquery.min.js"),
    ("bootstrap", "dist/js/bootstrap.min.js", "js/bootstrap.min.js"),
    ("react", "umd/react.production.min.js", "js/react-react.min.js"),
    ("react-dom", "umd/react-dom.production.min.js", "js/react-dom.min.js"),
    ("react-modal", "dist/react-modal.min.js", "js/react-modal.min.js"),
    ("plotly.js-dist-min", "plotly.min.js", "js/plotly-plotly.min.js"),
    ("sjcl", "sjcl.js", "js/sjcl.js"),
    ("layout-bin-packer", "dist/layout-bin-packer.js.map", "js/layout-bin-packer.js.map"),
    ("layout-bin-packer", "dist/layout-bin-packer.js", "js/layout_bin_packer.js"),
    ("d3", "d3.min.js", "js/d3.v3.min.js"),
    ("d3-selection-multi", "build/d3-selection-multi.js", "js/d3-selection-multi.v1.js"),
    ("save-svg-as-png", "lib/saveSvgAsPng.js", "js/saveSvgAsPng.js"),
    ("react-resizable", "css/styles.css", "css/react-resizable-styles.css"),
    ("react-grid-layout", "css/styles.css", "css/react-grid-layout-styles.css"),
    ("bootstrap", "dist/css/bootstrap.min.css", "css/bootstrap.min.css"),
    # build.py saves unpkg's answer for the bare package (its main file) under fonts/.
    ("classnames", "index.js", "fonts/classnames"),
    *[("bootstrap", f"dist/fonts/{name}", f"fonts/{name}") for name in _BOOTSTRAP_FONTS],
    # The name build.py checks for (its URL's fragment kept); browsers request the plain .svg above.
    ("bootstrap", "dist/fonts/glyphicons-halflings-regular.svg",
     "fonts/glyphicons-halflings-regular.svg#glyphicons_halflingsregular"),
    *[("mathjax", path, f"js/mathjax/2.7.5/{path}") for path in _MATHJAX],
]
VERSION_FILE = "version.built"  # build.py skips re-downloading when it holds visdom's version


def static_dir() -> Path:
    """visdom's static folder, where its server serves the assets from."""
    import importlib.util

    spec = importlib.util.find_spec("visdom")
    if spec is None or not spec.origin:
        raise RunnerError("the visdom package is not installed "
                          "(pip install visdom, with PIP_CONSTRAINT=constraints.txt)")
    return Path(spec.origin).parent / "static"


def missing_assets(static: Path | None = None) -> list[str]:
    static = static or static_dir()
    return [target for _, _, target in ASSETS if not (static / target).is_file()]


def install_assets(static: Path | None = None, npm: str = "npm", force: bool = False, quiet: bool = False) -> list[str]:
    """Fetch the packages with `npm pack` into a temp folder and copy the needed files; returns what was written."""
    static = static or static_dir()
    todo = ASSETS if force else [a for a in ASSETS if not (static / a[2]).is_file()]
    written = []
    if todo:
        npm_path = shutil.which(npm)
        if npm_path is None:
            raise RunnerError(f"{npm!r} not found: installing visdom's web assets needs npm "
                              "(e.g. apt-get install npm) and the npm registry once")
        packages = sorted({package for package, _, _ in todo})
        with tempfile.TemporaryDirectory(prefix="visdom-assets-") as tmp:
            if not quiet:
                print(f"fetching {len(packages)} npm packages: {', '.join(packages)}", file=sys.stderr)
            done = subprocess.run([npm_path, "pack", "--json", "--silent", *(f"{p}@{PACKAGES[p]}" for p in packages)],
                                  cwd=tmp, capture_output=True, text=True)
            if done.returncode != 0:
                raise RunnerError(f"npm pack failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
            tarballs = {entry["name"]: Path(tmp) / entry["filename"] for entry in json.loads(done.stdout)}
            for package in packages:
                if package not in tarballs:
                    raise RunnerError(f"npm pack returned no tarball for {package}")
                wanted = [(inner, static / target) for name, inner, target in todo if name == package]
                try:
                    written += [str(t.relative_to(static)) for t in _copy_members(tarballs[package], wanted)]
                except OSError as exc:
                    raise RunnerError(f"cannot write visdom's assets into {static}: {exc.strerror or exc}") from None
    import visdom

    try:
        (static / VERSION_FILE).write_text(visdom.__version__)  # type: ignore[attr-defined]  # not in visdom's stub
    except OSError as exc:
        raise RunnerError(f"cannot write into {static}: {exc.strerror or exc}") from None
    if not quiet:
        print(f"visdom assets: {len(written)} written, {len(ASSETS) - len(written)} already there, in {static}",
              file=sys.stderr)
    return written


def _copy_members(tarball: Path, wanted: list[tuple[str, Path]]) -> list[Path]:
    """Files out of an npm tarball (whose top folder is usually, not always, 'package/')."""
    targets: dict[str, list[Path]] = {}
    for inner, target in wanted:
        targets.setdefault(inner, []).append(target)
    written = []
    with tarfile.open(tarball) as archive:
        for member in archive:
            inner = member.name.split("/", 1)[-1]
            if member.isfile() and inner in targets and (source := archive.extractfile(member)) is not None:
                data = source.read()
                for target in targets.pop(inner):
                    target.parent.mkdir(parents=True, exist_ok=True)
                    tmp = target.with_name(f".{target.name}.tmp")
                    tmp.write_bytes(data)
                    os.replace(tmp, target)
                    written.append(target)
    if targets:
        raise RunnerError(f"{tarball.name} lacks {', '.join(sorted(targets))}")
    return written


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, env_path: str | None = None) -> None:
    """Run visdom's server in this process until interrupted; never downloads anything."""
    missing = missing_assets()
    if missing:
        raise RunnerError(f"visdom's web assets are missing from {static_dir()}: {', '.join(missing)}; "
                          "run 'runner visdom install-assets' once (it needs npm and the npm registry)")
    from tornado import ioloop
    from visdom.server import app as visdom_app
    from visdom.server.defaults import DEFAULT_ENV_PATH

    # visdom turns on Tornado's debug mode, whose autoreload restarts the server when any source
    # file changes; a setting given beforehand wins over debug's default.
    visdom_app.tornado_settings["autoreload"] = False
    visdom_app.tornado_settings["static_handler_class"] = _static_handler()
    env_path = env_path or DEFAULT_ENV_PATH
    app = visdom_app.Application(port=port, base_url="", env_path=env_path)
    try:
        app.listen(port, address=host, max_buffer_size=1024 ** 3)
    except OSError as exc:
        raise RunnerError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    shown = f"[{host}]" if ":" in host else host
    print(f"Visdom at http://{shown}:{port}/ (environments saved in {env_path}); Ctrl-C stops it", flush=True)
    try:
        ioloop.IOLoop.current().start()
    except KeyboardInterrupt:
        pass


def _static_handler():
    from tornado.web import StaticFileHandler

    class StaticFiles(StaticFileHandler):
        @classmethod
        def make_static_url(cls, settings, path, include_version=True):
            # visdom's page links its user stylesheet as ../user/style.css, outside the static
            # folder; recent Tornado answers 403 to the whole page when asked to version it.
            if path.startswith("../"):
                return settings.get("static_url_prefix", "/static/") + path
            return super().make_static_url(settings, path, include_version)

    return StaticFiles


def replay(source, server: str = f"http://{DEFAULT_HOST}", port: int = DEFAULT_PORT,
           env: str | None = None) -> tuple[int, list[str]]:
    """Send a recorded message log (a run folder or the log file) to a server; returns (messages, environments)."""
    import requests

    path = Path(source)
    log = path / LOG_NAME if path.is_dir() else path
    if not log.is_file():
        raise RunnerError(f"no Visdom log at {log} (runs record one when the visdom plugin is on)")
    entries = []
    for number, line in enumerate(log.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            endpoint, msg = json.loads(line)
        except ValueError:
            # A run killed mid-write leaves a partial last line; everything before it still counts.
            print(f"skipping unreadable line {number} of {log}", file=sys.stderr)
            continue
        if env:
            msg["eid"] = env
        entries.append((endpoint, msg))
    base = f"{base_url(server)}:{port}"
    session = requests.Session()
    if urlparse(base).hostname in ("localhost", "127.0.0.1", "::1"):
        session.trust_env = False  # a proxy from the environment must not catch loopback traffic
    envs = list(dict.fromkeys(msg.get("eid") or "main" for _, msg in entries))
    try:
        for eid in envs:  # updates to an environment the server does not know fail there
            session.post(f"{base}/env/{quote(eid, safe='')}", data=json.dumps({"eid": eid}),
                         timeout=10).raise_for_status()
        for endpoint, msg in entries:
            session.post(f"{base}/{endpoint}", data=json.dumps(msg), timeout=30).raise_for_status()
    except requests.ConnectionError:
        raise RunnerError(f"no Visdom server answers at {base} (start one with 'runner visdom')") from None
    except requests.RequestException as exc:
        raise RunnerError(f"replay to the Visdom server at {base} failed: {exc}") from None
    return len(entries), envs


def base_url(server: str) -> str:
    """A server's URL without port or path ("host", "http://host:8097/x" -> "http://host"); an IPv6
    host in brackets, 127.0.0.1 when none is given."""
    parsed = urlparse(server if "://" in server else f"http://{server}")
    host = parsed.hostname or DEFAULT_HOST
    return f"{parsed.scheme}://{f'[{host}]' if ':' in host else host}"


def _default_port() -> int:
    try:
        return int(os.environ.get("VISDOM_PORT") or DEFAULT_PORT)
    except ValueError:
        return DEFAULT_PORT


def cmd_visdom(argv) -> int:
    argv = list(argv)
    if argv[:1] == ["install-assets"]:
        parser = argparse.ArgumentParser(prog="runner visdom install-assets",
                                         description="Put visdom's JavaScript, CSS and fonts (from npm packages) "
                                                     "into its static folder, so its server needs no internet.")
        parser.add_argument("--force", action="store_true", help="fetch and rewrite every file, even those present")
        parser.add_argument("--npm", default="npm", help="npm executable (default: npm)")
        args = parser.parse_args(argv[1:])
        install_assets(npm=args.npm, force=args.force)
        return 0
    if argv[:1] == ["replay"]:
        parser = argparse.ArgumentParser(prog="runner visdom replay",
                                         description="Send a run's recorded Visdom plots to a running server.")
        parser.add_argument("run_dir", metavar="RUN_DIR", help=f"a run folder (holding {LOG_NAME}) or the log file")
        parser.add_argument("--server", default=os.environ.get("VISDOM_SERVER_URL") or f"http://{DEFAULT_HOST}",
                            help="server URL (default: $VISDOM_SERVER_URL or http://127.0.0.1)")
        parser.add_argument("--port", type=int, default=_default_port(), help="default: $VISDOM_PORT or 8097")
        parser.add_argument("--env", help="replay into this environment instead of the recorded one")
        args = parser.parse_args(argv[1:])
        count, envs = replay(args.run_dir, args.server, args.port, args.env)
        base = f"{base_url(args.server)}:{args.port}"
        for eid in envs:
            print(f"replayed {count} messages: {base}/env/{quote(eid, safe='')}")
        return 0
    parser = argparse.ArgumentParser(
        prog="runner visdom", description="Start a local Visdom server for live plots; needs no internet "
                                          "once 'runner visdom install-assets' has run.",
        epilog="Also: 'runner visdom install-assets', 'runner visdom replay RUN_DIR'.")
    parser.add_argument("--port", type=int, default=_default_port(), help="default: $VISDOM_PORT or 8097")
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--env-path", help="where environments are saved (default: visdom's, ~/.visdom)")
    args = parser.parse_args(argv)
    serve(args.host, args.port, args.env_path)
    return 0
