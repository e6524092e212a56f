#!/usr/bin/env python3
"""Run the main notebook in JupyterLab, in headless Chromium, and check the page.

What run_notebooks.py checks in the saved outputs, this checks where a reader
sees it: JupyterLab is started on a free localhost port, Chromium (Debian's
/usr/bin/chromium, driven by Playwright; nothing downloads a browser) opens the
notebook, runs every cell from the Run menu, waits for the kernel to finish and
reads the rendered outputs from the DOM: the model summary, the progress and
epoch lines, the learning curves and the prediction grid as pictures of
non-zero size, the test accuracy, and no error or stderr output anywhere.

    python tests/browser_test.py [--timeout S] [--out DIR] [NOTEBOOK]

The notebook runs on a copy in target/browser/notebooks/ (JupyterLab autosaves,
and the repository's notebook must stay as it is). The environment (EPOCHS,
TRAIN_SIZE, CIFAR10_DIR, RESULTS_DIR, ...) passes through JupyterLab to the
kernel, except RESULTS_DIR: a full-page screenshot and the text of every
cell's outputs go to --out (default: $RESULTS_DIR, else
target/notebook-results), as jupyterlab.png and jupyterlab-outputs.txt, with
the executed copy (jupyterlab.ipynb) and JupyterLab's log; the kernel's own
results go to a fresh jupyterlab-run/ in that folder.
"""
import argparse
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"

# ---------------------------------------------------------------------------
# The checks, one row each: (name, kind, argument). Each is evaluated on what
# the page shows once the run is over, and each failure is reported by name.
#   text      the outputs' text contains the string
#   regex     the outputs' text matches the regular expression
#   picture   the output area of the code cell whose source contains the
#             string shows an <svg> or <img> with a non-zero bounding box
#   png       the same, an <img> whose source is PNG data
#   no-stderr no stderr or error output with text anywhere in the notebook
#   all-ran   every code cell has an execution count (none left [ ] or [*])
CHECKS = [
    ("every code cell ran", "all-ran", None),
    ("the model summary", "text", "Total params: 1,250,858"),
    # The Keras-style progress line of verbose: 1, e.g.
    # "4/15 [======>.......................] - ETA: 3s - loss: 2.2112 - acc: 0.1523"
    ("a progress line", "regex", r"\d+/\d+ \[[=>.]+\]"),
    ("the epoch line", "text", "val_acc: "),
    ("the learning curves (a picture)", "picture", "learning_curves("),
    ("the prediction grid (a PNG picture)", "png", "Gallery::random("),
    ("the test accuracy line", "text", "Test Data accuracy: "),
    ("no error or stderr output", "no-stderr", None),
]

# A picture's bounding box must be at least this many CSS pixels each way
# (non-zero, and not an icon).
MIN_PICTURE = 32

# ---------------------------------------------------------------------------
# JavaScript run in the page.

# Where the run stands: the kernel's status as the notebook toolbar shows it,
# and each code cell's prompt ("[ ]:", "[*]:", "[3]:").
STATE_JS = """() => {
  const nb = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook');
  if (!nb) return null;
  const prompts = [...nb.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')]
      .map(p => p.textContent.trim());
  const indicator = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator');
  const status = document.querySelector('.jp-StatusBar-Widget [title^="Change kernel"], .jp-KernelStatus');
  return {
    prompts,
    indicator: indicator ? (indicator.getAttribute('data-status') || indicator.textContent) : null,
    statusbar: status ? status.textContent.trim() : null,
    cells: nb.querySelectorAll('.jp-Cell').length,
    dialog: (document.querySelector('.jp-Dialog') || {}).innerText || null,
  };
}"""

# Every cell's prompt and the rendered text of its outputs, and per code cell
# the pictures in its output area with their bounding boxes.
OUTPUTS_JS = """() => {
  const nb = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook');
  return [...nb.querySelectorAll(':scope .jp-Cell')].map((cell, index) => {
    const area = cell.querySelector('.jp-OutputArea');
    const pictures = area ? [...area.querySelectorAll('.jp-OutputArea-output svg, .jp-OutputArea-output img')]
        .filter(el => !el.parentElement.closest('svg'))
        .map(el => {
          const r = el.getBoundingClientRect();
          return {tag: el.tagName.toLowerCase(), width: r.width, height: r.height,
                  src: el.tagName.toLowerCase() === 'img' ? (el.getAttribute('src') || '').slice(0, 40) : null};
        }) : [];
    const errors = [...cell.querySelectorAll(
        '.jp-RenderedText[data-mime-type="application/vnd.jupyter.stderr"], .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
        .map(el => el.innerText.trim()).filter(t => t.length > 0);
    const prompt = cell.querySelector('.jp-InputArea-prompt');
    return {
      index,
      code: cell.classList.contains('jp-CodeCell'),
      prompt: prompt ? prompt.textContent.trim() : '',
      text: area ? area.innerText : '',
      pictures,
      errors,
    };
  });
}"""

# The height of the notebook's cells, from the top of the first to the bottom
# of the last, and of the rest of JupyterLab's window around the notebook's
# scrolling area (the notebook is scrolled back to its top first; its
# scrollHeight would count the room JupyterLab leaves below the last cell).
HEIGHTS_JS = """() => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  const scroller = panel.querySelector('.jp-WindowedPanel-outer') || panel.querySelector('.jp-Notebook');
  scroller.scrollTop = 0;
  const cells = panel.querySelectorAll('.jp-Cell');
  const top = scroller.getBoundingClientRect().top;
  const bottom = cells[cells.length - 1].getBoundingClientRect().bottom;
  return {content: bottom - top + scroller.scrollTop, visible: scroller.clientHeight, window: window.innerHeight};
}"""

SCROLL_TOP_JS = """() => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  const scroller = panel.querySelector('.jp-WindowedPanel-outer') || panel.querySelector('.jp-Notebook');
  scroller.scrollTop = 0;
}"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_copy(notebook):
    """The notebook's copy, at target/browser/notebooks/NAME, beside a
    target/browser/crate symlink to the repository's crate.

    The first cell says `:dep cifar10-cnn = { path = "../crate" }`, relative
    to the notebook's folder, where JupyterLab starts the kernel. A symlink
    keeps the copy byte for byte the notebook a reader opens (no rewritten
    path), and evcxr canonicalizes relative :dep paths, which resolves the
    link: the kernel builds the very same dependency (the repository's
    crate/, absolute) as the headless runs do, so evcxr's build cache is
    shared with them."""
    base = ROOT / "target" / "browser"
    folder = base / "notebooks"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    link = base / "crate"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(ROOT / "crate", target_is_directory=True)
    copy = folder / notebook.name
    shutil.copyfile(notebook, copy)
    return copy


def write_settings(settings_dir):
    """JupyterLab user settings for the test: no windowing, so that every cell
    is in the DOM (for the checks and the screenshot), and no news or update
    pop-ups over the page."""
    def put(plugin, values):
        package, name = plugin.rsplit(":", 1)
        path = settings_dir / package / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    put("@jupyterlab/notebook-extension:tracker", {"windowingMode": "none"})
    put("@jupyterlab/apputils-extension:notification", {"fetchNews": "false", "checkForUpdates": False})


def start_lab(root_dir, work, log_path):
    port = free_port()
    token = secrets.token_hex(16)
    settings = work / "settings"
    write_settings(settings)
    command = [
        sys.executable, "-m", "jupyter", "lab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root_dir}",
        f"--LabApp.user_settings_dir={settings}",
        f"--LabApp.workspaces_dir={work / 'workspaces'}",
    ]
    if os.geteuid() == 0:
        command.append("--allow-root")
    env = dict(os.environ)
    # The user's own Jupyter configuration (a password, another root folder)
    # stays out of the test; kernelspecs are data, not configuration.
    env["JUPYTER_CONFIG_DIR"] = str(work / "config")
    log = open(log_path, "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root_dir)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"JupyterLab exited ({process.returncode}); its log: {log_path}")
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            process.terminate()
            raise RuntimeError(f"JupyterLab did not answer within 120 s; its log: {log_path}")
        time.sleep(0.5)
    return process, url, token


def code_cell_with(cells, needle):
    """The index (among all cells) of the first code cell whose source has needle."""
    for i, cell in enumerate(cells):
        if cell["cell_type"] == "code" and needle in "".join(cell["source"]):
            return i
    return None


def evaluate(checks, outputs, source_cells):
    """Each check's (name, ok, detail)."""
    text = "\n".join(o["text"] for o in outputs)
    results = []
    for name, kind, arg in checks:
        ok, detail = False, ""
        if kind == "all-ran":
            missing = [o["index"] for o in outputs if o["code"] and not re.fullmatch(r"\[\d+\]:", o["prompt"])]
            ok = not missing
            detail = "" if ok else f"cells without an execution count: {missing}"
        elif kind == "text":
            ok = arg in text
            detail = "" if ok else f"no {arg!r} in the outputs"
        elif kind == "regex":
            ok = re.search(arg, text) is not None
            detail = "" if ok else f"nothing in the outputs matches /{arg}/"
        elif kind in ("picture", "png"):
            index = code_cell_with(source_cells, arg)
            if index is None:
                detail = f"no code cell with {arg!r} in the notebook"
            elif index >= len(outputs):
                detail = f"cell {index} is not in the page"
            else:
                # Non-zero, and more than an icon.
                pictures = [p for p in outputs[index]["pictures"] if p["width"] >= MIN_PICTURE and p["height"] >= MIN_PICTURE]
                if kind == "png":
                    pictures = [p for p in pictures if p["tag"] == "img" and (p["src"] or "").startswith("data:image/png")]
                ok = bool(pictures)
                shown = outputs[index]["pictures"]
                detail = "" if ok else f"cell {index} ({arg!r}) shows no such picture (pictures there: {shown})"
        elif kind == "no-stderr":
            found = [f"cell {o['index']}: {e[:600]}" for o in outputs for e in o["errors"]]
            ok = not found
            detail = "" if ok else "\n".join(found).replace("\n", "\n        | ")
        else:
            raise ValueError(kind)
        results.append((name, ok, detail))
    return results


def menu(page, title, item):
    """Click the menu bar's title, then the item of that menu."""
    page.locator(".lm-MenuBar-item", has_text=re.compile(f"^{re.escape(title)}$")).click()
    page.locator(".lm-Menu-item:not(.lm-mod-disabled)",
                 has=page.locator(".lm-Menu-itemLabel", has_text=re.compile(f"^{re.escape(item)}$"))).click()


def run_in_browser(url, token, name, out_dir, timeout):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # Chromium refuses to start as root without --no-sandbox; the page is
        # our own localhost JupyterLab.
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{url}/lab/tree/{name}?token={token}&reset")
        page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-Cell", timeout=120_000)

        # The kernel is up (idle) before anything runs.
        deadline = time.monotonic() + 180
        while True:
            state = page.evaluate(STATE_JS)
            if state and state["dialog"]:
                raise RuntimeError(f"JupyterLab shows a dialog instead of the kernel: {state['dialog']!r}")
            if state and state["indicator"] == "idle":
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the kernel did not start within 180 s: {state}")
            time.sleep(0.5)
        print("  kernel idle; Run > Run All Cells", flush=True)

        # Close the file browser: the screenshot is of the notebook.
        if page.locator("#jp-left-stack:not(.lm-mod-hidden)").count():
            page.keyboard.press("Control+b")
        page.locator(".jp-NotebookPanel .jp-Cell").first.click()

        # Outputs saved in the notebook, if any, must not count: Edit > Clear
        # Outputs of All Cells (which also clears the execution counts), then
        # Run > Run All Cells, as a reader would.
        menu(page, "Edit", "Clear Outputs of All Cells")
        menu(page, "Run", "Run All Cells")

        # Done: the kernel is idle and no cell waits ([*]), and stays so for a
        # few seconds (evcxr forwards the program's output from a thread of its
        # own, so late lines can arrive just after a cell's end). evcxr runs
        # the cells after a failing one; a kernel that stops there leaves them
        # at [ ]:, which the checks report.
        start = time.monotonic()
        stable_since = None
        last_report = start
        started = False
        ended = "the run ended"
        while True:
            state = page.evaluate(STATE_JS)
            now = time.monotonic()
            prompts = state["prompts"]
            if state["dialog"]:
                # "Kernel Restarting: the kernel ... appears to have died", or
                # any other dialog in the way: the run is over.
                ended = f"JupyterLab showed a dialog: {state['dialog']!r}"
                print(f"  {ended}", flush=True)
                break
            busy = state["indicator"] != "idle" or any(p == "[*]:" for p in prompts)
            started = started or busy or any(re.fullmatch(r"\[\d+\]:", p) for p in prompts)
            if started and not busy:
                stable_since = stable_since or now
                if now - stable_since >= 5:
                    break
            else:
                stable_since = None
            if now - last_report >= 60:
                done = sum(1 for p in prompts if re.fullmatch(r"\[\d+\]:", p))
                print(f"  {now - start:.0f} s: {done}/{len(prompts)} code cells done, kernel {state['indicator']}", flush=True)
                last_report = now
            if now - start > timeout:
                ended = f"TIMEOUT: still running after {timeout} s"
                print(f"  {ended}: {state}", flush=True)
                break
            time.sleep(1)
        seconds = time.monotonic() - start
        print(f"  run over after {seconds:.0f} s", flush=True)

        outputs = page.evaluate(OUTPUTS_JS)

        # Save from the UI (the executed copy, for debugging), then show the
        # whole notebook: JupyterLab scrolls it inside its panel, so the
        # window is made as tall as the notebook before the screenshot.
        page.keyboard.press("Control+s")
        heights = page.evaluate(HEIGHTS_JS)
        full = int(heights["window"] - heights["visible"] + heights["content"] + 40)
        page.set_viewport_size({"width": 1280, "height": min(max(full, 900), 32000)})
        page.wait_for_timeout(1000)
        page.evaluate(SCROLL_TOP_JS)
        page.wait_for_timeout(500)
        screenshot = out_dir / "jupyterlab.png"
        page.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    return seconds, ended, outputs, screenshot


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", nargs="?", type=Path, default=ROOT / "notebooks" / "cifar10_cnn.ipynb")
    parser.add_argument("--out", type=Path,
                        default=Path(os.environ.get("RESULTS_DIR") or ROOT / "target" / "notebook-results"))
    parser.add_argument("--timeout", type=int, default=1800, help="seconds for the whole run")
    args = parser.parse_args()

    if not os.access(CHROMIUM, os.X_OK):
        print(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
        return 1
    try:
        import playwright  # noqa: F401
    except ImportError:
        print("the playwright package is missing: pip install -r tests/requirements.txt (it never downloads a browser)")
        return 1

    notebook = args.notebook.resolve()
    out_dir = args.out.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    copy = prepare_copy(notebook)
    source_cells = json.loads(copy.read_text())["cells"]
    work = Path(tempfile.mkdtemp(prefix="browser-test-"))
    log_path = out_dir / "jupyterlab-server.log"

    # The kernel writes its results (the training backup, the model, the
    # curves) to a fresh folder of its own: a backup left there by the headless
    # run of the same notebook would be restored instead of training, and the
    # page would show no training at all.
    kernel_results = out_dir / "jupyterlab-run"
    shutil.rmtree(kernel_results, ignore_errors=True)
    kernel_results.mkdir(parents=True)
    os.environ["RESULTS_DIR"] = str(kernel_results)

    total_start = time.monotonic()
    print(f"JupyterLab on {copy} (headless Chromium) ...", flush=True)
    process, url, token = start_lab(copy.parent, work, log_path)
    try:
        seconds, ended, outputs, screenshot = run_in_browser(url, token, copy.name, out_dir, args.timeout)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(work, ignore_errors=True)

    text_path = out_dir / "jupyterlab-outputs.txt"
    with open(text_path, "w") as f:
        for o in outputs:
            if o["code"]:
                f.write(f"--- cell {o['index']} {o['prompt']} pictures: {o['pictures']}\n{o['text']}\n")
    if copy.exists():
        shutil.copyfile(copy, out_dir / "jupyterlab.ipynb")

    results = [("the run ended (no timeout, no dialog)", ended == "the run ended", "" if ended == "the run ended" else ended)]
    results += evaluate(CHECKS, outputs, source_cells)
    width = max(len(name) for name, _, _ in results)
    for name, ok, detail in results:
        print(f"  {'ok  ' if ok else 'FAIL'} {name.ljust(width)}  {detail}".rstrip(), flush=True)
    failed = [name for name, ok, _ in results if not ok]
    print(f"screenshot: {screenshot}")
    print(f"outputs' text: {text_path}")
    total = time.monotonic() - total_start
    if failed:
        print(f"FAILED browser test of {notebook.name} ({total:.0f} s): {len(failed)} of {len(results)} checks: " + "; ".join(failed))
        return 1
    print(f"ok browser test of {notebook.name} ({total:.0f} s, the cells {seconds:.0f} s): {len(results)} checks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
