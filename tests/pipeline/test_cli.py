from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from gptlab.cli import build_parser

from ..conftest import REPO
from ..servers import free_port, wait_for_http


def test_readme_commands_exist_in_the_cli():
    readme = (REPO / "README.md").read_text()
    used = set(re.findall(r"^gptlab ([a-z][\w-]*)", readme, flags=re.M))
    commands = set(build_parser()._subparsers._group_actions[0].choices)  # noqa: SLF001 - argparse has no API
    assert used and used <= commands, used - commands
    for target in ("make demo", "make test", "make ui", "dvc exp run -S profile=demo"):
        assert target in readme


def test_the_layout_doc_is_generated_from_the_folders():
    from ..layout import BEGIN, DOC, END, section

    text = DOC.read_text()
    current = text[text.index(BEGIN) : text.index(END) + len(END)]
    assert current == section(), f"{DOC.relative_to(REPO)}'s layout is stale: run `make layout`"


def test_ci_runs_the_readme_test_command():
    assert "make test" in (REPO / ".ci" / "run").read_text()


@pytest.mark.slow
def test_ui_serves_the_embedded_store_on_loopback(project: Path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gptlab", "ui", "--params", str(project / "params.yaml"), "--port", str(port)],
        cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", proc, timeout=90)
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
        local = [line.split()[3] for line in listening.splitlines()]
        assert local and all(address.startswith("127.0.0.1:") for address in local), listening
        assert (project / "mlflow.db").is_file()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_export_hf_writes_a_folder_transformers_loads_with_the_same_logits(tmp_path: Path, capsys, bpe_cache):
    import torch
    import transformers

    from gptlab.cli import main
    from gptlab.core.checkpoint import save_checkpoint
    from gptlab.core.model import GPT

    from ..core.test_model import SMALL

    torch.manual_seed(0)
    model = GPT(SMALL).eval()
    save_checkpoint(tmp_path / "ckpt", model=model, meta={"step": 7})
    assert main(["export-hf", str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
    assert '"step": "7"' in capsys.readouterr().out
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    idx = torch.randint(0, SMALL.vocab_size, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx).logits, atol=1e-4, rtol=1e-4)
    # Self-contained: the tokenizer loads from the same folder, offline (lm-eval's `--model hf` needs both).
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    assert tokenizer("Hello world")["input_ids"] == [15496, 995]
