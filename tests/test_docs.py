"""Every code block of README.md and docs/*.md, run or checked, so that the docs stay true.

- ```python blocks run, page by page, in one namespace per page (a block may use what an
  earlier block of its page defined), after the page's hidden setup: an HTML comment
  ``<!-- docs-test setup ... -->`` that builds the tiny real objects a fragment of a user's
  script refers to (``dataloader``, ``model``). A test function a block defines is called too:
  it must pass, or fail with AssertionError where its ``def`` line says ``# fails`` (a complete
  test file is run under pytest by tests/test_testing.py instead). A failing block's traceback
  names the markdown file and line.
- ```bash blocks are checked, not run: the install and test commands are .ci/run's; every
  ``noisepair`` and ``torchrun`` command and every script's flags parse (a script's own
  argparse, stopped before it does any work); a command no rule knows fails.
- ```diff blocks name the script they patch (``<!-- docs-test diff: NAME -->``); each is applied
  to a small copy of that script's training loop below, whose lines match the real script's
  where the diff touches it, and the patched loop is run and checked.
- Relative links point at files and headings that exist.
"""

import argparse
import contextlib
import inspect
import io
import linecache
import os
import re
import runpy
import shlex
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from scipy.optimize import linear_sum_assignment

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)
SETUP = re.compile(r"<!-- docs-test setup[^\n]*\n(.*?)-->", re.S)
DIFF_TARGET = re.compile(r"<!-- docs-test diff: (\w+) -->\s*$")


@dataclass
class Block:
    page: Path
    line: int  # of the block's first code line in the page
    lang: str
    code: str
    before: str  # the page's text before the fence

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path, lang: str | None = None) -> list[Block]:
    text = page.read_text()
    found = [
        Block(page, text[: m.start(2)].count("\n") + 1, m.group(1), m.group(2), text[: m.start()])
        for m in FENCE.finditer(text)
    ]
    return [b for b in found if lang is None or b.lang == lang]


def rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


def test_every_block_has_a_rule():
    known = {"python", "bash", "diff", "text", ""}  # text and "": output shown, not code
    odd = [f"{b.where}: ```{b.lang}" for p in PAGES for b in blocks(p) if b.lang not in known]
    assert not odd, f"blocks in a language test_docs.py does not check: {odd}"


# -- python -------------------------------------------------------------------------------------
def run_source(code: str, page: Path, line: int, namespace: dict) -> None:
    """Run ``code`` as if it stood at ``line`` of ``page``: tracebacks show the markdown."""
    name = rel(page)
    text = page.read_text()
    linecache.cache[name] = (len(text), None, text.splitlines(True), name)
    try:
        exec(compile("\n" * (line - 1) + code, name, "exec"), namespace)
    except BaseException as e:
        e.add_note(f"in the block at {name}:{line}")
        raise


def call_tests(block: Block, namespace: dict, defined_before: set) -> None:
    """Call the zero-argument test functions the block defined; ``# fails`` ones must fail.
    A complete test file (its docstring starts ``test_NAME.py:``) runs under pytest in
    tests/test_testing.py, which also compares its failure message with the page's."""
    if re.match(r'"""test_\w+\.py:', block.code):
        return
    for name, fn in list(namespace.items()):
        if not name.startswith("test_") or name in defined_before or not callable(fn):
            continue
        if inspect.signature(fn).parameters:
            continue  # a pytest fixture's user: run under pytest by tests/test_testing.py
        expect_failure = re.search(rf"def {name}\(\):\s*# fails", block.code) is not None
        try:
            fn()
        except AssertionError:
            if not expect_failure:
                raise
        else:
            assert not expect_failure, f"{block.where}: {name} is marked '# fails' but passed"


@pytest.fixture
def fresh_process_state():
    """accelerate's state is process-wide: leave none behind for the next test."""
    yield
    if "accelerate" in sys.modules:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(True)
        GradientState._reset_state()


PYTHON_PAGES = [p for p in PAGES if blocks(p, "python")]


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=rel)
def test_python_blocks_run(page, tmp_path, monkeypatch, fresh_process_state):
    monkeypatch.chdir(tmp_path)  # blocks that write files write them here
    text = page.read_text()
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    setup = SETUP.search(text)
    if setup:
        line = text[: setup.start(1)].count("\n") + 1
        run_source(setup.group(1), page, line, namespace)
    for block in blocks(page, "python"):
        before = set(namespace)
        run_source(block.code, page, block.line, namespace)
        call_tests(block, namespace, before)


# -- bash ---------------------------------------------------------------------------------------
def commands(code: str) -> list[list[str]]:
    """The block's commands as argument lists: continuation lines joined, comments dropped,
    ``a && b`` split."""
    out = []
    for line in code.replace("\\\n", " ").splitlines():
        tokens = shlex.split(line, comments=True)
        while tokens:
            cut = tokens.index("&&") if "&&" in tokens else len(tokens)
            out.append(tokens[:cut])
            tokens = tokens[cut + 1 :]
    return out


def ci_commands() -> list[list[str]]:
    """.ci/run's commands, written as a user types them (``pip``, no ``-q``)."""
    out = []
    for cmd in commands((ROOT / ".ci" / "run").read_text()):
        if cmd[0] in ("set", "cd"):
            continue
        if cmd[:3] == ["python", "-m", "pip"]:
            cmd = [t for t in cmd[2:] if t != "-q"]
        out.append(cmd)
    return out


def is_install(cmd: list[str]) -> bool:
    return cmd[0] in ("pip", ".") or cmd[:3] == ["python3", "-m", "venv"]


def extras() -> set[str]:
    import tomllib

    return set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    )


def test_readme_install_and_test_commands_are_the_ci_ones():
    readme = [commands(b.code) for b in blocks(ROOT / "README.md", "bash")]
    install = next(cmds for cmds in readme if ["noisepair", "demo", "--quick"] in cmds)
    ci = ci_commands()
    assert [c for c in install if is_install(c)] == [c for c in ci if is_install(c)], (
        "README's install differs from .ci/run's: keep them in sync"
    )
    assert install[-1] == ["noisepair", "demo", "--quick"]
    assert install[0][:2] == ["git", "clone"] and install[1] == ["cd", install[0][-1]]
    assert [["python", "-m", "pytest", "-q"]] in readme and ci[-1] == [
        "python",
        "-m",
        "pytest",
        "-q",
    ]


class Parsed(Exception):
    """Raised by a script's parser once its arguments parsed: the script does no work."""


def parse_script_args(script: str, args: list[str], monkeypatch) -> str | None:
    """Run ``script`` as ``python script args`` until its argparse parser has parsed ``args``;
    None when they parse, else what went wrong. Whatever the script's imports set (sys.path,
    environment variables, its own modules) is undone."""
    path = ROOT / script
    real_parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        real_parse(self, args, namespace)
        raise Parsed

    env, modules, err = dict(os.environ), set(sys.modules), io.StringIO()
    with monkeypatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
        m.setattr(sys, "argv", [str(path), *args])
        m.setattr(sys, "path", [str(path.parent), *sys.path])
        m.setattr(sys, "stderr", err)
        try:
            runpy.run_path(str(path), run_name="__main__")
            result = "it ran without parsing its arguments"
        except Parsed:
            result = None
        except SystemExit as e:
            result = f"exit {e.code}: {err.getvalue().strip()}"
        finally:
            os.environ.clear()
            os.environ.update(env)
            for name in set(sys.modules) - modules:  # the script folder's own modules
                if str(getattr(sys.modules[name], "__file__", "")).startswith(str(path.parent)):
                    del sys.modules[name]
    return result


def script_problem(script: str, args: list[str], monkeypatch) -> str | None:
    path = ROOT / script
    if not path.is_file():
        return f"{script} does not exist"
    source = path.read_text()
    if "argparse" in source:
        return parse_script_args(script, args, monkeypatch)
    unknown = [a for a in args if f'"{a}"' not in source]  # a script reading sys.argv itself
    return f"{script} does not read {unknown}" if unknown else None


def test_bash_commands_exist_and_their_flags_parse(monkeypatch):
    from torch.distributed.run import get_args_parser

    from noisepair.cli import build_parser

    ci = ci_commands()
    names = extras()
    problems: list[str] = []
    for page in PAGES:
        for block in blocks(page, "bash"):
            for cmd in commands(block.code):
                problem = None
                if cmd[0] in ("noisepair", "torchrun"):
                    at = next((i for i, t in enumerate(cmd) if t.endswith(".py")), len(cmd) - 1)
                    parser = build_parser() if cmd[0] == "noisepair" else get_args_parser()
                    try:
                        with contextlib.redirect_stderr(io.StringIO()) as err:
                            parser.parse_args(cmd[1:] if cmd[0] == "noisepair" else cmd[1 : at + 1])
                    except SystemExit:
                        problem = f"does not parse: {err.getvalue().strip()}"
                    if cmd[0] == "torchrun" and problem is None:
                        problem = script_problem(cmd[at], cmd[at + 1 :], monkeypatch)
                elif cmd[0] == "python" and cmd[1:2] != ["-m"]:
                    problem = script_problem(cmd[1], cmd[2:], monkeypatch)
                elif cmd[0] == "pip" and cmd not in ci:
                    editable = cmd[1:3] == ["install", "-e"] and len(cmd) == 4
                    wanted = re.fullmatch(r"\.\[([\w,]+)\]", cmd[-1]) if editable else None
                    if not wanted or not set(wanted.group(1).split(",")) <= names:
                        problem = "not .ci/run's, nor extras of pyproject.toml"
                elif not (cmd[:2] == ["git", "clone"] or cmd[0] == "cd" or cmd in ci):
                    problem = "no rule checks it: add one to tests/test_docs.py"
                if problem:
                    problems.append(f"{block.where}: {shlex.join(cmd)}: {problem}")
    assert not problems, "\n".join(problems)


# -- diff ---------------------------------------------------------------------------------------
def apply_diff(source: str, diff: str, where: str) -> str:
    """Apply a recipe diff (hunks separated by `` ...`` lines, no line numbers): each hunk's
    context and removed lines must occur exactly once in ``source``, at any indentation offset
    that is the same for the whole hunk (the docs may show a loop dedented)."""
    lines = source.splitlines()
    hunks = [h for h in re.split(r"^ \.\.\.$", diff, flags=re.M) if h.strip()]
    for hunk in hunks:
        body = [ln for ln in hunk.splitlines() if ln]
        old = [ln[1:] for ln in body if ln[0] in " -"]
        new = [ln[1:] for ln in body if ln[0] in " +"]
        if not old:
            lines = new + lines
            continue
        width = lambda s: len(s) - len(s.lstrip())  # noqa: E731
        hits = []
        for i in range(len(lines) - len(old) + 1):
            window = lines[i : i + len(old)]
            if all(a.strip() == b.strip() for a, b in zip(window, old)):
                shifts = {width(a) - width(b) for a, b in zip(window, old) if b.strip()}
                if len(shifts) == 1:
                    hits.append((i, shifts.pop()))
        assert len(hits) == 1, f"{where}: a hunk's lines occur {len(hits)} times, not once:\n{hunk}"
        i, shift = hits[0]
        lines[i : i + len(old)] = [" " * shift + ln if ln.strip() else ln for ln in new]
    return "\n".join(lines) + "\n"


# Small copies of the scripts the README's diffs patch. Where a diff touches them their lines are
# the real scripts' lines (torchcfm's examples/images/cifar10/train_cifar10.py at cacd4dc and
# diffusers' examples/unconditional_image_generation/train_unconditional.py at 58eb52c, to which
# the diffs apply unchanged); a tiny dataset and model stand in for the rest. ``seen`` records
# what each step trained on.
TRAIN_CIFAR10 = """
import copy
import os

import torch
from torch.utils.data import TensorDataset
from tqdm import trange
from torchcfm.conditional_flow_matching import ConditionalFlowMatcher
from torchcfm.models.unet.unet import UNetModelWrapper

device = torch.device("cpu")


def infiniteloop(dataloader):  # utils_cifar.infiniteloop
    while True:
        for x, y in iter(dataloader):
            yield x


class Recorder(ConditionalFlowMatcher):
    def sample_location_and_conditional_flow(self, x0, x1, t=None, return_noise=False):
        seen.append((x1, x0))
        return super().sample_location_and_conditional_flow(x0, x1, t, return_noise)


def train(total_steps):
    dataset = TensorDataset(torch.randn(48, 3, 4, 4), torch.arange(48))
    dataloader = torch.utils.data.DataLoader(
        dataset,
        batch_size=16,
        shuffle=True,
        num_workers=0,
        drop_last=True,
    )

    datalooper = infiniteloop(dataloader)

    net_model = torch.nn.Conv2d(3, 3, 1)
    optim = torch.optim.Adam(net_model.parameters(), lr=1e-3)
    FM = Recorder(sigma=0.0)

    with trange(total_steps, disable=True) as pbar:
        for step in pbar:
            optim.zero_grad()
            x1 = next(datalooper).to(device)
            x0 = torch.randn_like(x1)
            t, xt, ut = FM.sample_location_and_conditional_flow(x0, x1)
            vt = net_model(xt) + 0 * t.view(-1, 1, 1, 1)
            loss = torch.mean((vt - ut) ** 2)
            loss.backward()
            optim.step()
"""

TRAIN_UNCONDITIONAL = """
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.utils.import_utils import is_xformers_available


def main(num_epochs):
    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    model = UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    weight_dtype = torch.float32
    if accelerator.mixed_precision == "fp16":
        weight_dtype = torch.float16
    elif accelerator.mixed_precision == "bf16":
        weight_dtype = torch.bfloat16
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = [{"input": x} for x in torch.rand(32, 3, 8, 8) * 2 - 1]
    train_dataloader = torch.utils.data.DataLoader(data, batch_size=8, shuffle=True)
    lr_scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, 1.0)

    # Prepare everything with our `accelerator`.
    model, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
        model, optimizer, train_dataloader, lr_scheduler
    )

    for epoch in range(num_epochs):
        model.train()
        for step, batch in enumerate(train_dataloader):
            clean_images = batch["input"].to(weight_dtype)
            # Sample noise that we'll add to the images
            noise = torch.randn(clean_images.shape, dtype=weight_dtype, device=clean_images.device)
            bsz = clean_images.shape[0]
            # Sample a random timestep for each image
            timesteps = torch.randint(
                0, noise_scheduler.config.num_train_timesteps, (bsz,), device=clean_images.device
            ).long()
            noisy_images = noise_scheduler.add_noise(clean_images, noise, timesteps)

            with accelerator.accumulate(model):
                model_output = model(noisy_images, timesteps).sample
                loss = F.mse_loss(model_output.float(), noise.float())
                accelerator.backward(loss)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            seen.append((batch, noise, noisy_images))
"""


def is_exact_assignment(x, z) -> bool:
    """z[i] goes with x[i] in an optimal assignment of the batch (squared distance)."""
    cost = torch.cdist(x.flatten(1).double(), z.flatten(1).double()) ** 2
    rows, cols = linear_sum_assignment(cost.numpy())
    return float(cost.diagonal().sum()) <= float(cost[rows, cols].sum()) * (1 + 1e-9)


def diff_block(name: str) -> Block:
    found = [b for p in PAGES for b in blocks(p, "diff") if DIFF_TARGET.search(b.before)]
    named = [b for b in found if DIFF_TARGET.search(b.before).group(1) == name]
    assert len(named) == 1, f"the docs have {len(named)} diff blocks for {name}, not one"
    return named[0]


def run_patched(template: str, name: str, entry: str, *args) -> list:
    block = diff_block(name)
    patched = apply_diff(template, block.code, block.where)
    namespace = {"__name__": name, "seen": []}
    exec(compile(patched, f"{block.where} applied to {name}", "exec"), namespace)
    namespace[entry](*args)
    return patched, namespace["seen"]


def test_every_diff_block_names_a_script_this_file_runs():
    for b in (b for p in PAGES for b in blocks(p, "diff")):
        m = DIFF_TARGET.search(b.before)
        assert m and m.group(1) in ("train_cifar10", "train_unconditional"), b.where


def test_torchcfm_recipe_trains_on_matched_noise_across_epochs():
    patched, seen = run_patched(TRAIN_CIFAR10, "train_cifar10", "train", 7)  # 3 batches an epoch
    assert "randn_like" not in patched and "= infiniteloop(" not in patched
    assert len(seen) == 7
    for x1, x0 in seen:
        assert x1.shape == x0.shape == (16, 3, 4, 4)
        assert is_exact_assignment(x1, x0)
    assert not torch.equal(seen[0][1], seen[3][1])  # the next epoch draws new noise


def test_diffusers_recipe_trains_on_matched_noise_in_weight_dtype(fresh_process_state):
    patched, seen = run_patched(TRAIN_UNCONDITIONAL, "train_unconditional", "main", 2)
    assert "torch.randn" not in patched
    assert len(seen) == 8  # 4 batches, 2 epochs
    for batch, noise, noisy in seen:
        assert noise.dtype == noisy.dtype == torch.bfloat16  # the script's dtype=weight_dtype
        assert torch.equal(noise, batch["noise"].to(torch.bfloat16))
        assert is_exact_assignment(batch["input"], batch["noise"])


def test_apply_diff_refuses_a_hunk_that_does_not_match():
    source = "a = 1\nif a:\n    b = 2\n"
    assert (
        apply_diff(source, " if a:\n-    b = 2\n+    b = 3\n", "t") == "a = 1\nif a:\n    b = 3\n"
    )
    assert apply_diff(source, "     b = 2\n+    c = b\n", "t").endswith("    b = 2\n    c = b\n")
    with pytest.raises(AssertionError, match="occur 0 times"):
        apply_diff(source, "-    b = 4\n+    b = 3\n", "t")


# -- links --------------------------------------------------------------------------------------
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slugs(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    heads = re.findall(r"^#+ (.+)$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"\w+://", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in slugs(dest):
            broken.append(target)
    assert not broken, f"{rel(page)}: links to nothing: {broken}"


def test_readme_stays_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 260


def test_block_helpers_find_what_a_page_holds():
    page = textwrap.dedent(
        """\
        text
        ```python
        x = 1
        ```
        ```bash
        noisepair demo --quick && python -m pytest -q  # two
        ```
        """
    )
    found = [(m.group(1), m.group(2)) for m in FENCE.finditer(page)]
    assert found == [
        ("python", "x = 1\n"),
        ("bash", "noisepair demo --quick && python -m pytest -q  # two\n"),
    ]
    assert commands(found[1][1]) == [
        ["noisepair", "demo", "--quick"],
        ["python", "-m", "pytest", "-q"],
    ]
