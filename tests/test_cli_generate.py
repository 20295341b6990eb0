"""`phi3v-spatial generate` and `chat` run as subprocesses on the tiny checkpoint (JSON output
checked); their one-line errors are checked in-process (no model load needed for most)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from phi3v_spatial import cli


def run_cli(*args, stdin=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "phi3v_spatial.cli", *args], input=stdin, capture_output=True,
                         text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return out


def test_generate_json_reproduces_the_original(tiny_checkpoint, reference_dir):
    golden = np.load(reference_dir / "model" / "m_image_one.npz")["gen_cache_tokens"][0].tolist()
    out = run_cli("generate", "--model", str(tiny_checkpoint), "--image", str(reference_dir / "images" / "img_640x480.png"),
                  "--prompt", "<|image_1|>\nWhat is shown in this image?", "--max-new-tokens", "12", "--ignore-eos",
                  "--device", "cpu", "--stream", "--json")
    lines = [json.loads(x) for x in out.stdout.strip().splitlines()]
    final = lines[-1]
    assert final["token_ids"] == golden and final["finish_reason"] == "length"
    assert final["prompt_tokens"] == 775 and final["completion_tokens"] == 12
    assert "".join(x["delta"] for x in lines[:-1]) == final["text"] != ""
    assert final["timings"]["prefill_seconds"] > 0


def test_chat_session_over_stdin(tiny_checkpoint, reference_dir):
    script = "\n".join([
        f"/image {reference_dir / 'images' / 'img_640x480.png'}",
        "What is shown in this image?",
        "And where is it?",
        "/image /no/such/image.png",
        "/reset",
        "Name three colors.",
        "/exit",
        "never read",
    ]) + "\n"
    out = run_cli("chat", "--model", str(tiny_checkpoint), "--max-new-tokens", "5", "--ignore-eos", "--json", "--quiet",
                  stdin=script)
    answers = [json.loads(x) for x in out.stdout.strip().splitlines()]
    assert [a["turn"] for a in answers] == [1, 2, 1]
    first, second, after_reset = answers
    assert first["prompt_tokens"] > 757  # the image is in the conversation
    assert second["prompt_tokens"] > first["prompt_tokens"] + first["completion_tokens"]
    assert second["timings"]["vision_seconds"] < first["timings"]["vision_seconds"]  # embedding reused
    assert after_reset["prompt_tokens"] < 50  # /reset dropped the image and the history
    assert all(a["completion_tokens"] == 5 for a in answers)
    assert "error: image file '/no/such/image.png' not found" in out.stderr


@pytest.mark.parametrize("args, message", [
    (["--model", "/no/such/model", "--prompt", "hi"], "checkpoint folder /no/such/model does not exist"),
    (["--image", "/no/such.png", "--prompt", "hi"], "image file '/no/such.png' not found"),
    (["--prompt", "word " * 5000, "--quiet"], "context holds 4096"),
])
def test_generate_errors_are_one_line(tiny_checkpoint, capsys, args, message):
    if "--model" not in args:
        args = ["--model", str(tiny_checkpoint), *args]
    assert cli.main(["generate", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]
