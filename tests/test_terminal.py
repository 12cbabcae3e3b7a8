"""The commands as a person runs them: in a real terminal (a pseudo-terminal with a size), where
the progress bar draws, Ctrl-C is a keystroke, and a crash only there once passed every other test."""
import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from runner.suite.plan import expand_specs

ROOT = Path(__file__).resolve().parents[1]
RUNNER = str(Path(sys.executable).with_name("runner"))  # the console script the README's command runs


def _foreground_job() -> None:
    """In the child: the pty as its controlling terminal, and Ctrl-C's signal as a shell gives a
    foreground job. A pytest started in the background (`pytest &` in a script) ignores SIGINT,
    and an ignored signal stays ignored across exec: the command would never see Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """A command on a 120x40 pseudo-terminal; `screen` is everything it wrote."""

    def __init__(self, argv, cwd=ROOT):
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.process = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, start_new_session=True,
                                        preexec_fn=_foreground_job)
        os.close(slave)
        self.screen = ""

    def read_until(self, seen, seconds: float) -> bool:
        """Read until seen(screen) holds (or `seen` is in it, for a string), at most `seconds`."""
        test = (lambda screen: seen in screen) if isinstance(seen, str) else seen
        deadline = time.monotonic() + seconds
        while not test(self.screen) and time.monotonic() < deadline:
            if not self._read(0.2) and self.process.poll() is not None:
                break
        return test(self.screen)

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return False
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # the other end closed
            return False
        self.screen += chunk.decode(errors="replace")
        return bool(chunk)

    def press(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def wait(self, seconds: float) -> int:
        deadline = time.monotonic() + seconds
        while self.process.poll() is None and time.monotonic() < deadline:
            self._read(0.2)
        while self._read(0.1):
            pass
        if self.process.poll() is None:
            self.process.kill()
            raise AssertionError(f"still running after {seconds} s; its screen:\n{self.screen[-3000:]}")
        os.close(self.master)
        return self.process.returncode


def lines(screen: str) -> list[str]:
    """What a person reads: each redraw and line on its own, terminal control sequences gone."""
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", screen).replace("\r", "\n").splitlines()


def test_the_readme_first_command_draws_its_progress_in_a_terminal(tmp_path, cifar_archive):
    readme = (ROOT / "README.md").read_text()
    assert "runner specs/p1_q4_crop.toml" in readme  # the command tested here is still the README's
    term = Terminal([RUNNER, "specs/p1_q4_crop.toml", "--quick", "--data", str(cifar_archive), "--out", str(tmp_path)])
    assert term.wait(300) == 0, term.screen[-3000:]
    assert "Traceback" not in term.screen
    # One bar over the whole run, redrawn in place, with rate, ETA, loss and accuracy.
    assert "\r" in term.screen and "12/12 [" in term.screen and "it/s" in term.screen
    assert "loss=" in term.screen and "accuracy=" in term.screen
    # One bar: what stays on the screen once each line is drawn over (a notice clears the bar, takes
    # its line and redraws it below) holds one bar, at 12/12.
    shown = [line.split("\r")[-1] for line in term.screen.split("\r\n")]
    assert [line for line in shown if "/12 [" in line] == [next(line for line in shown if "12/12 [" in line)]
    assert "test accuracy" in term.screen


def test_a_suite_with_jobs_in_a_terminal(tmp_path, cifar_archive):
    term = Terminal([RUNNER, "specs/", "--quick", "--jobs", "2", "--data", str(cifar_archive), "--out", str(tmp_path)])
    assert term.wait(600) == 0, term.screen[-3000:]
    assert "Traceback" not in term.screen
    # The live status line (k of N, what runs, ETA) and one line per start and end, never mixed.
    assert "suite: " in term.screen and " done; running: " in term.screen and "ETA" in term.screen
    finished = [line for line in lines(term.screen) if " done in " in line]
    assert len(finished) == len(expand_specs([ROOT / "specs"]))  # the folder's specs, search specs left out
    assert all(line.startswith("[") for line in finished)
    # Attacks show their own result, not their source model's accuracy.
    attack = next(line for line in term.screen.splitlines() if line.startswith("p3_q1_fgsm "))
    assert "fooled" in attack and "test accuracy" not in attack
    # The report of those runs, as the README says to make it, with the title page's author.
    pdf = tmp_path / "report.pdf"
    term = Terminal([RUNNER, "report", str(tmp_path), "--quick", "-o", str(pdf), "--author", "Ada Lovelace",
                     "--collaborators", "Charles Babbage, Mary Somerville"])
    assert term.wait(300) == 0, term.screen[-3000:]
    assert "Traceback" not in term.screen and f"wrote {pdf}" in term.screen
    from pypdf import PdfReader

    title_page = PdfReader(pdf).pages[0].extract_text()
    assert "Ada Lovelace" in title_page and "Charles Babbage, Mary Somerville" in title_page
    assert "CIS680" in title_page  # specs/report.toml's course


def test_ctrl_c_says_how_to_continue_and_resume_needs_no_data(tmp_path, cifar_archive):
    out = tmp_path / "out"
    argv = [RUNNER, "specs/p1_q1_raw.toml", "--quick", "--set", "train.iterations=3000", "--set", "train.log_every=1",
            "--set", "data.train_limit=500", "--set", "plugins.visdom.enabled=false", "--data", str(cifar_archive),
            "--out", str(out)]
    term = Terminal(argv)
    # Past the first checkpoints (5 steps an epoch); the bar redraws at most 10 times a second,
    # so any count from 120 on will do.
    past = lambda screen: any(int(n) >= 120 for n in re.findall(r" (\d+)/3000 \[", screen))
    assert term.read_until(past, 240), term.screen[-2000:]
    term.press("\x03")  # Ctrl-C, as typed
    assert term.wait(60) == 130
    (run_dir,) = (out / "p1_q1_raw").iterdir()
    assert f"continue it with: runner resume {run_dir}" in term.screen
    assert "Traceback" not in term.screen and "Engine run is terminating" not in term.screen
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"

    resumed = Terminal([RUNNER, "resume", str(run_dir)])  # no --data: the run recorded where its data is
    assert resumed.read_until("resumed at iteration", 240), resumed.screen[-2000:]
    resumed.press("\x03")
    assert resumed.wait(60) == 130
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"


def test_a_new_plugin_from_the_scaffold_in_a_terminal(tmp_path):
    # What a plugin author types first: the files are named, then the commands to type next; a
    # second call refuses to overwrite them and says what to do.
    term = Terminal([RUNNER, "new", "plugin", "demo"], cwd=tmp_path)
    assert term.wait(60) == 0
    shown = lines(term.screen)
    assert [line for line in shown if line.startswith("wrote")] == ["wrote demo/demo.py", "wrote demo/test_demo.py",
                                                                    "wrote demo/demo.toml"]
    assert "next:" in shown and any("python -m pytest" in line for line in shown)
    again = Terminal([RUNNER, "new", "plugin", "demo"], cwd=tmp_path)
    assert again.wait(60) == 2
    assert "demo/demo.py" in again.screen and "Traceback" not in again.screen


def test_search_show_of_the_example_study_in_a_terminal():
    readme = (ROOT / "README.md").read_text()
    assert "runner search show artifacts/example/search_p1_q4_crop" in readme
    term = Terminal([RUNNER, "search", "show", "artifacts/example/search_p1_q4_crop"])
    assert term.wait(120) == 0, term.screen[-3000:]
    shown = [line for line in lines(term.screen) if line]
    assert "Traceback" not in term.screen
    assert shown[0].startswith("study search_p1_q4_crop in artifacts/example/search_p1_q4_crop/_search: 24 trials")
    assert shown[1].split() == ["trial", "state", "value", "train.lr", "train.weight_decay", "train.label_smoothing",
                                "run"]
    assert shown[2].split()[:4] == ["4", "complete", "0.7570", "0.0859"]
    # The study ran in another folder: the command to rerun names this checkout's spec.
    assert any(line.startswith("rerun its values as an ordinary run: runner specs/search_p1_q4_crop.toml --set "
                               "train.lr=0.08591315698733488") for line in shown)
    assert "its test accuracy over seeds 0,1,2: 0.7394 ± 0.0051" in shown
