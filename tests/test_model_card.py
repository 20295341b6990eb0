"""The model card's snippet runs with only its import line changed (examples/model_card.py)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "model_card.py"


def test_model_card_snippet_runs(tiny_checkpoint, reference_dir):
    image = reference_dir / "images" / "img_640x480.png"
    out = subprocess.run([sys.executable, str(EXAMPLE), str(tiny_checkpoint), str(image), "cpu"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip()  # the decoded answer (random weights: any text)


def test_drop_in_names():
    import phi3v_spatial
    from phi3v_spatial.model import Phi3VForCausalLM
    from phi3v_spatial.processing import Phi3VProcessor

    assert phi3v_spatial.AutoModelForCausalLM is Phi3VForCausalLM
    assert phi3v_spatial.AutoProcessor is Phi3VProcessor
