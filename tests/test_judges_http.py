"""The OpenAI-compatible judge against a real HTTP server on loopback."""

from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from deltalens.errors import ConfigError
from deltalens.judges import JudgeAuthError, JudgeCache, OpenAIJudge, TraitInfo, score
from deltalens.judges.http import score_from_logprobs, score_from_text

TRAIT = TraitInfo("pirate", "Talks like a pirate.")
KEY = "sk-test-0123456789abcdef"


class Server:
    """A chat-completions endpoint whose behaviour tests script per answer text.

    The answer (and logprobs) depend on the response under judgement: it contains a
    marker like ``<<lp:70>>`` (logprobs centred on 70), ``<<text:42>>`` (text only),
    ``<<refuse>>``, ``<<junk>>``, ``<<slow>>`` (sleeps past the client timeout) or
    ``<<fail:N>>`` (HTTP 500 for the first N requests of that item).
    """

    def __init__(self):
        self.requests = []
        self.fail_counts = {}
        self.lock = threading.Lock()
        srv = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with srv.lock:
                    srv.requests.append(
                        {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
                    )
                if self.headers.get("Authorization") != f"Bearer {KEY}":
                    return self._send(401, {"error": {"message": "bad key"}})
                prompt = body["messages"][0]["content"]
                if "<<slow>>" in prompt:
                    time.sleep(1.5)
                    return self._send(200, _answer("50", None))
                if "<<fail:" in prompt:
                    n = int(prompt.split("<<fail:")[1].split(">>")[0])
                    with srv.lock:
                        k = srv.fail_counts.get(prompt, 0)
                        srv.fail_counts[prompt] = k + 1
                    if k < n:
                        return self._send(500, {"error": "boom"})
                    return self._send(200, _answer("80", None))
                if "<<lp:" in prompt:
                    c = int(prompt.split("<<lp:")[1].split(">>")[0])
                    top = [
                        {"token": str(c - 10), "logprob": math.log(0.25)},
                        {"token": str(c), "logprob": math.log(0.5)},
                        {"token": str(c + 10), "logprob": math.log(0.15)},
                        {"token": "The", "logprob": math.log(0.1)},
                    ]
                    return self._send(200, _answer(str(c), top if body.get("logprobs") else None))
                if "<<text:" in prompt:
                    return self._send(
                        200, _answer("Score: " + prompt.split("<<text:")[1].split(">>")[0], None)
                    )
                if "<<refuse>>" in prompt:
                    return self._send(200, _answer("REFUSAL", None))
                if "<<junk>>" in prompt:
                    return self._send(200, _answer("I cannot say.", None))
                return self._send(200, _answer("50", None))

            def _send(self, code, obj):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        class Quiet(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # clients that timed out and hung up (the point of the timeout test)

        self.httpd = Quiet(("127.0.0.1", 0), H)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _answer(text, top):
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
    if top is not None:
        choice["logprobs"] = {"content": [{"token": text, "logprob": -0.7, "top_logprobs": top}]}
    return {"id": "x", "object": "chat.completion", "choices": [choice]}


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def judge(server, monkeypatch):
    monkeypatch.setenv("DELTALENS_TEST_JUDGE_KEY", KEY)
    return OpenAIJudge(
        model="judge-model",
        base_url=server.url,
        api_key_env="DELTALENS_TEST_JUDGE_KEY",
        timeout=0.5,
        max_retries=2,
        backoff=0.05,
        concurrency=4,
    )


def test_logprob_weighted_score_and_text_fallbacks(judge, server):
    items = [("q1", "a <<lp:70>>"), ("q2", "b <<text:42>>"), ("q3", "c <<refuse>>"), ("q4", "d <<junk>>")]
    s = judge.score_batch("trait", items, TRAIT)
    # Σ p·n / Σ p over number tokens: (0.25·60 + 0.5·70 + 0.15·80) / 0.9
    assert s[0].status == "ok" and s[0].value == pytest.approx((0.25 * 60 + 0.5 * 70 + 0.15 * 80) / 0.9)
    assert s[1].status == "ok" and s[1].value == 42.0
    assert s[2].status == "refusal" and s[2].value is None
    assert s[3].status == "unparseable" and s[3].value is None
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == f"Bearer {KEY}"
    body = req["body"]
    assert (
        body["model"] == "judge-model"
        and body["logprobs"] is True
        and body["top_logprobs"] == 20
        and body["temperature"] == 0
    )
    prompts = [r["body"]["messages"][0]["content"] for r in server.requests]
    assert any("Talks like a pirate." in p and "q1" in p and "a <<lp:70>>" in p for p in prompts)


def test_coherence_prompt_and_number_mass_threshold():
    assert (
        score_from_logprobs(
            [{"token": "90", "logprob": math.log(0.2)}, {"token": "no", "logprob": math.log(0.8)}]
        )
        is None
    )
    assert score_from_logprobs([{"token": " 30", "logprob": 0.0}]) == 30.0
    assert score_from_text("I'd say 101 or maybe 77.").value == 77.0
    assert score_from_text("").status == "unparseable"


def test_retries_then_success(judge, server):
    s = judge.score_batch("coherence", [("q", "r <<fail:2>>")], None)
    assert s[0].status == "ok" and s[0].value == 80.0
    assert len(server.requests) == 3  # two 500s, then the answer


def test_timeouts_exhaust_retries_into_an_error_score(judge, server):
    t = time.time()
    s = judge.score_batch("trait", [("q", "r <<slow>>"), ("q", "fine <<lp:30>>")], TRAIT)
    assert s[0].status == "error" and "timeout" in s[0].detail and "3 attempts" in s[0].detail
    assert s[1].status == "ok"  # the other item of the batch is unaffected
    assert time.time() - t < 8


def test_missing_key_is_a_clear_error_before_any_request(server, monkeypatch):
    monkeypatch.delenv("NO_SUCH_JUDGE_KEY", raising=False)
    j = OpenAIJudge(base_url=server.url, api_key_env="NO_SUCH_JUDGE_KEY")
    with pytest.raises(ConfigError, match="NO_SUCH_JUDGE_KEY, which is not set"):
        j.check()
    with pytest.raises(ConfigError, match="NO_SUCH_JUDGE_KEY"):
        j.score_batch("trait", [("q", "r")], TRAIT)
    assert server.requests == []


def test_wrong_key_stops_at_once(server, monkeypatch):
    monkeypatch.setenv("WRONG_JUDGE_KEY", "sk-wrong")
    j = OpenAIJudge(base_url=server.url, api_key_env="WRONG_JUDGE_KEY", max_retries=3, backoff=0.01)
    with pytest.raises(JudgeAuthError, match="HTTP 401"):
        j.score_batch("trait", [("q", "r")], TRAIT)
    assert len(server.requests) == 1
    assert "sk-wrong" not in repr(j)


def test_cache_keeps_final_scores_and_retries_errors(judge, server, tmp_path):
    cache = JudgeCache(tmp_path / "cache.sqlite")
    items = [("q", "x <<lp:70>>"), ("q", "y <<refuse>>"), ("q", "z <<slow>>")]
    first = score(judge, "trait", items, TRAIT, cache)
    assert [s.status for s in first] == ["ok", "refusal", "error"]
    n = len(server.requests)
    second = score(judge, "trait", items, TRAIT, cache)
    # only the errored item is asked again (1 request + 2 retries); the others come from the cache
    assert len(server.requests) - n == 3
    assert second[0].value == first[0].value and second[1].status == "refusal"
    assert len(cache) == 2
    # a different trait definition is a different prompt: a cache miss
    other = TraitInfo("pirate", "Talks like a pirate, arr.")
    n = len(server.requests)
    score(judge, "trait", items[:1], other, cache)
    assert len(server.requests) - n == 1
    cache.close()
    # the key is never written to the cache
    assert KEY.encode() not in (tmp_path / "cache.sqlite").read_bytes()


def test_steering_run_with_failing_judge_keeps_scores_and_resumes(judge, server, tmp_path, monkeypatch):
    """Mid-sweep judge failures do not crash the run; the re-run re-scores only what failed
    and does not regenerate anything."""
    from deltalens.steering.evaluate import Candidate, EvalSettings, evaluate_candidates
    from deltalens.steering.results import ResultsLog
    from tiny import tiny_model

    lm = tiny_model("llama")
    questions = ["Why is the sky blue? <<lp:60>>", "Hello <<slow>>"]
    settings = EvalSettings(questions, max_new_tokens=3)
    log = ResultsLog(tmp_path / "results.jsonl")
    cache = JudgeCache(tmp_path / "cache.sqlite")
    rec = evaluate_candidates(
        lm, [Candidate.baseline()], settings, judge, TRAIT, log, cache=cache, progress=False
    )[0]
    assert rec.n_errors == 1 and rec.trait_mean == pytest.approx((0.25 * 50 + 0.5 * 60 + 0.15 * 70) / 0.9)
    assert rec.responses[1]["trait_status"] == "error"
    # the server recovers; a re-run must not regenerate, only re-score the failed item
    monkeypatch.setattr(judge, "timeout", 5.0)
    import deltalens.steering.evaluate as ev

    def no_generation(*a, **k):
        raise AssertionError("regenerated")

    monkeypatch.setattr(ev, "generate_sweep", no_generation)
    n = len(server.requests)
    log2 = ResultsLog(tmp_path / "results.jsonl")
    rec2 = evaluate_candidates(
        lm, [Candidate.baseline()], settings, judge, TRAIT, log2, cache=cache, progress=False
    )[0]
    assert rec2.n_errors == 0 and rec2.responses[1]["trait"] == 50.0
    assert len(server.requests) - n == 3  # trait, coherence and relevance of the slow item only
    assert log2.appended == 1
    text = (tmp_path / "results.jsonl").read_text()
    assert KEY not in text
