"""Answerers: the OpenAI-compatible endpoint against a local server, oracle and baselines."""
import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from phi3v_spatial.errors import DataError
from phi3v_spatial.evaluate import metrics
from phi3v_spatial.evaluate.answerers import (
    ConstantAnswerer,
    EndpointAnswerer,
    OracleAnswerer,
    RandomAnswerer,
    conversation,
    format_answer,
)
from phi3v_spatial.evaluate.loaders import EvalSample

pytestmark = pytest.mark.timeout(60)  # every request also carries its own timeout


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        state = self.server.state
        if self.path == "/v1/models" and state.get("models"):
            self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in state["models"]]})
        else:
            self._send(404, {"error": {"message": "no such route"}})

    def do_POST(self):
        state = self.server.state
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with state["lock"]:
            state["requests"].append({"path": self.path, "auth": self.headers.get("Authorization"), "body": req})
            fail = state["fail_first"] > 0
            if fail:
                state["fail_first"] -= 1
        if fail:
            return self._send(503, {"error": {"message": "busy"}})
        if self.path != "/v1/chat/completions":
            return self._send(404, {"error": {"message": "no such route"}})
        if state.get("reject"):
            return self._send(400, {"error": {"message": "model 'x' does not exist"}})
        text = " ".join(p["text"] for m in req["messages"] for p in m["content"] if p["type"] == "text")
        self._send(200, {"id": "c1", "object": "chat.completion", "model": req.get("model"),
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": "Yes. echo: " + text}}]})


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.state = {"requests": [], "lock": threading.Lock(), "fail_first": 0, "models": ["tiny-phi3v"]}
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def _samples(tmp_path, n=3):
    img = tmp_path / "img.png"
    Image.new("RGB", (8, 6), (10, 200, 30)).save(img)
    return [EvalSample(id=f"s{i}", task="relation_yesno",
                       messages=[{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": f"<|image_1|>\nIs object {i} left of the bowl?"}],
                       images=[img], answer={"type": "yesno", "value": True}) for i in range(n)]


def test_endpoint_answerer_round_trip(server, tmp_path):
    url = f"http://127.0.0.1:{server.server_port}"
    samples = _samples(tmp_path)
    ans = EndpointAnswerer(url, api_key="sk-test", max_tokens=16, timeout=10, concurrency=3, retries=0)
    texts = ans.answer(samples)
    assert texts == [f"Yes. echo: Be brief. Is object {i} left of the bowl?" for i in range(3)]  # order kept
    reqs = server.state["requests"]
    assert len(reqs) == 3 and all(r["path"] == "/v1/chat/completions" for r in reqs)
    body = reqs[0]["body"]
    assert reqs[0]["auth"] == "Bearer sk-test"
    assert body["model"] == "tiny-phi3v" and body["max_tokens"] == 16 and body["temperature"] == 0.0
    user = body["messages"][1]
    assert user["role"] == "user" and [p["type"] for p in user["content"]] == ["image_url", "text"]
    url_data = user["content"][0]["image_url"]["url"]
    assert url_data.startswith("data:image/png;base64,")
    assert base64.b64decode(url_data.split(",", 1)[1]) == (tmp_path / "img.png").read_bytes()
    assert ans.name == f"endpoint:{url}/v1/chat/completions model=tiny-phi3v"


def test_endpoint_retries_and_errors(server, tmp_path):
    base = f"http://127.0.0.1:{server.server_port}/v1/chat/completions"
    server.state["fail_first"] = 1
    ans = EndpointAnswerer(base, model="m", timeout=10, concurrency=1, retries=1)
    assert ans.answer(_samples(tmp_path, 1))[0].startswith("Yes.")  # the 503 was retried
    assert len(server.state["requests"]) == 2
    server.state["fail_first"] = 5
    with pytest.raises(DataError, match="HTTP 503"):
        EndpointAnswerer(base, model="m", timeout=10, retries=1).answer(_samples(tmp_path, 1))
    server.state["fail_first"] = 0
    server.state["reject"] = True
    with pytest.raises(DataError, match="does not exist"):
        EndpointAnswerer(base, model="x", timeout=10, retries=0).answer(_samples(tmp_path, 1))


def test_endpoint_without_model_listing(server, tmp_path):
    server.state["models"] = []
    ans = EndpointAnswerer(f"http://127.0.0.1:{server.server_port}/v1", timeout=10, retries=0)
    assert ans.answer(_samples(tmp_path, 1))[0].startswith("Yes.")
    assert "model" not in server.state["requests"][0]["body"]


def test_endpoint_unreachable(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DataError, match="unreachable"):
        EndpointAnswerer(f"http://127.0.0.1:{port}", model="m", timeout=2, retries=0).answer(_samples(tmp_path, 1))


def test_conversation_parts(tmp_path):
    s = _samples(tmp_path, 1)[0]
    conv = conversation(s)
    assert conv[0] == {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}
    assert conv[1]["content"] == [{"type": "image", "image": str(tmp_path / "img.png")},
                                  {"type": "text", "text": "Is object 0 left of the bowl?"}]
    s.messages[1]["content"] = "<|image_2|> what?"
    with pytest.raises(DataError, match="image_2"):
        conversation(s)


ANSWERS = [
    {"type": "yesno", "value": False},
    {"type": "choice", "options": ["left", "right", "behind"], "value": 2},
    {"type": "quantity", "value_m": 0.4267, "unit": "in", "quantity": "width"},
    {"type": "quantity", "value_m": 1.234, "unit": "ft", "quantity": "center_distance"},
    {"type": "quantity", "value_m": 0.057, "unit": "cm", "quantity": "height"},
    {"type": "clock", "value": 11},
    {"type": "count", "value": 0},
    {"type": "boxes", "value": [{"label": "mug", "bbox_2d": [100, 200, 300, 400]}]},
    {"type": "poses", "value": [{"x": 0.4, "y": -0.1, "z": 0.05, "roll": 0.0, "pitch": 3.1416, "yaw": 0.2, "grasp": True}]},
]


def test_oracle_format_is_scored_correct():
    texts = OracleAnswerer().answer([EvalSample("i", "t", [], [], a) for a in ANSWERS])
    assert texts[:3] == ["No.", "C. behind", "16.8 in"]
    for a, t in zip(ANSWERS, texts):
        assert metrics.score(a, t)["correct"], (a, t)
    assert format_answer(ANSWERS[-1]) == json.dumps(ANSWERS[-1]["value"])


def test_random_and_constant_baselines():
    samples = [EvalSample(f"id{i}", "t", [], [], a) for i, a in enumerate(ANSWERS * 3)]
    r1 = RandomAnswerer(seed=1).answer(samples)
    assert r1 == RandomAnswerer(seed=1).answer(samples)  # deterministic per id
    assert r1 == RandomAnswerer(seed=1).answer(samples[:5]) + RandomAnswerer(seed=1).answer(samples[5:])
    assert r1 != RandomAnswerer(seed=2).answer(samples)
    for s, t in zip(samples, r1):
        assert metrics.score(s.answer, t)["answered"], (s.answer, t)  # always a well-formed answer
    assert ConstantAnswerer("yes").answer(samples[:2]) == ["yes", "yes"]
    with pytest.raises(DataError, match="reference"):
        OracleAnswerer("reference").answer(samples[:1])


def test_cli_scores_an_endpoint_on_a_vsr_file(server, tmp_path, capsys):
    from phi3v_spatial import cli

    Image.new("RGB", (8, 6)).save(tmp_path / "a.jpg")
    rows = [{"image": "a.jpg", "caption": f"The cup is left of the bowl {i}.", "label": i % 2, "relation": "left of"}
            for i in range(4)]
    (tmp_path / "vsr.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    url = f"http://127.0.0.1:{server.server_port}/v1"
    rc = cli.main(["eval", "--endpoint", url, "--suite", f"vsr:{tmp_path / 'vsr.jsonl'}", "--out", str(tmp_path / "o"),
                   "--batch-size", "2", "--timeout", "10", "--no-progress", "--no-charts"])
    assert rc == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["num_samples"] == 4 and last["score"] == 0.5  # the server always says yes; half the labels are 1
    assert len(server.state["requests"]) == 4
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["relations"]["left of"]["n"] == 4 and summary["tasks"]["vsr"]["pope_yes_ratio"] == 1.0
