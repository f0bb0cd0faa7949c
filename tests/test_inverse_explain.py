"""Explanations and simulation scoring on a planted token latent of the tiny model.

Latent 0 of an SAE at the embedding fires exactly on the token ' dog' (its encoder is that token's
embedding, its bias half-way between the token's own score and the best other token's), so the
right explanation and its simulation score (r = 1 for a predictor that marks ' dog') are known.
The LLM path runs against a real HTTP server on loopback that answers like a chat model.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

from deltalens.circuits.descriptions import latent_descriptions
from deltalens.inverse import CollectConfig, collect
from deltalens.inverse.explain import (
    ExplainConfig,
    ExplainResult,
    apply_to_dashboards,
    explain_latents,
    explanation_words,
    pearson,
    simulate_offline,
    write_for_sae,
)
from deltalens.sae import SAE, SAEConfig

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "The dog sleeps in the sun.",
    "I love reading books about science, history and art.",
    "Tell me a story about a brave mouse who lived in a big old house.",
    "Why is the sky blue? Light scatters in the air.",
    "What is the capital of France? The capital of France is Paris.",
    "The lazy dog and the brown fox.",
    "You are a helpful assistant. Answer the question briefly.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10",
    "hello there good morning thanks please",
    "A dog is a good friend.",
    "The sun is hot and the air is warm.",
]
DOG = 344  # ' dog' in the tiny tokenizer


@pytest.fixture(scope="module")
def planted(tiny):
    assert tiny.tokenizer(" dog", add_special_tokens=False)["input_ids"] == [DOG]
    E = tiny.arch.embed.weight.detach()
    w = E[DOG] / E[DOG].pow(2).sum()
    s = E @ w
    other = s[torch.arange(len(s)) != DOG].max()
    sae = SAE(SAEConfig(tiny.d_model, 4, "standard", site="embed", apply_b_dec_to_input=False))
    with torch.no_grad():
        sae.W_enc[:, 0] = w
        sae.b_enc[0] = -(1 + other) / 2
        sae.b_enc[1:] = -1e3
        sae.W_dec[0] = E[DOG] / E[DOG].norm()
    coll = collect(tiny, sae, TEXTS, CollectConfig(batch_size=4, cross_entropy=False))
    return tiny, sae, coll


def test_offline_explanation_names_the_token_and_scores_it(planted):
    lm, sae, coll = planted
    cfg = ExplainConfig(n_explain=2, n_score_top=2, n_score_random=4, logit_tokens=2)
    res = explain_latents(lm, sae, coll, [0], cfg)
    e = res.explanations[0]
    assert e["description"].startswith("fires on ' dog'")
    assert e["components"]["top_tokens"] == [" dog"]
    assert set(e["explain_prompts"]).isdisjoint(e["score_prompts"])  # scored on held-out prompts
    assert len(e["score_prompts"]) == 6
    # ' dog' is the only token the overlap simulator marks; activation is constant on it → r = 1
    assert e["simulation"]["r"] == pytest.approx(1.0)
    assert e["components"]["promotes"] and e["description"].count("promotes") == 1


def test_simulation_score_is_pearson():
    assert explanation_words("fires on ' dog' (as in 'lazy dog'); promotes ' cat'") == {"dog", "lazy dog"}
    assert explanation_words("the word dog, and cats") == {"dog", "cats"}
    toks = [["The", " lazy", " dog", "."], [" a", " cat"]]
    pred = np.concatenate(simulate_offline("'dog', 'lazy'", toks))
    assert pred.tolist() == [0, 1, 1, 0, 0, 0]
    real = np.array([0.0, 0.2, 3.0, 0.0, 0.1, 0.0])
    from scipy.stats import pearsonr

    assert pearson(pred, real) == pytest.approx(pearsonr(pred, real)[0])
    assert pearson(np.zeros(6), real) is None


def test_explanations_fill_circuit_and_dashboard_descriptions(planted, tmp_path):
    lm, sae, coll = planted
    res = explain_latents(lm, sae, coll, [0, 1], ExplainConfig(n_explain=2, logit_tokens=0))
    res.save(tmp_path / "run")
    back = ExplainResult.load(tmp_path / "run")
    assert back.descriptions() == res.descriptions()
    # next to the SAE: circuits' latent_descriptions reads it (top_latents.json descriptions)
    (tmp_path / "sae").mkdir()
    write_for_sae(res, tmp_path / "sae")
    assert latent_descriptions(tmp_path / "sae") == res.descriptions()
    from deltalens.circuits.sae_attribution import SAEAttribution
    from deltalens.hooks import Site

    att = SAEAttribution(
        Site(0, "resid"), "denoising", "indirect", True, "m", [0], ["x"], 1.0, 0.0,
        torch.tensor([[0.5, 0.1, 0.0, 0.0]]), None, torch.zeros(1, 4), torch.zeros(1, 4), {},
    )  # fmt: skip
    att.save_all(tmp_path / "att", k=2, descriptions=latent_descriptions(tmp_path / "sae"))
    top = json.loads((tmp_path / "att" / "top_latents.json").read_text())
    assert top[0]["latent"] == 0 and top[0]["description"] == res.descriptions()[0]
    # into dashboards (Neuronpedia "explanations"), which descriptions then prefer
    dash = tmp_path / "dash"
    (dash / "features").mkdir(parents=True)
    (dash / "features" / "0.json").write_text(json.dumps({"index": 0, "pos_str": ["x"], "activations": []}))
    (dash / "index.json").write_text(
        json.dumps({"kind": "feature dashboards", "features": [{"index": 0, "file": "features/0.json"}]})
    )
    assert apply_to_dashboards(res, dash) == 1
    rec = json.loads((dash / "features" / "0.json").read_text())
    assert rec["explanations"][0]["description"] == res.descriptions()[0]
    assert latent_descriptions(None, dash) == {0: res.descriptions()[0]}


class ChatServer:
    """Answers explanation prompts with a fixed phrase and simulation prompts with 10 for every
    numbered token that contains 'dog', 0 otherwise (what a good simulator would say)."""

    def __init__(self):
        self.prompts: list[str] = []
        srv = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][0]["content"]
                srv.prompts.append(prompt)
                if "What does the feature detect?" in prompt:
                    text = "Explanation: the word 'dog'"
                else:
                    lines = [ln.split("\t", 1) for ln in prompt.split("\n\n")[-1].splitlines() if "\t" in ln]
                    text = "\n".join(f"{i}\t{10 if 'dog' in t else 0}" for i, t in lines)
                data = json.dumps({"choices": [{"message": {"content": text}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def test_llm_explainer_and_simulator_through_the_judge_client(planted):
    lm, sae, coll = planted
    srv = ChatServer()
    try:
        cfg = ExplainConfig(
            n_explain=2, n_score_top=2, n_score_random=3, explainer="llm", simulator="llm",
            judge_base_url=srv.url, judge_model="m", api_key_env=None, logit_tokens=0,
        )  # fmt: skip
        e = explain_latents(lm, sae, coll, [0], cfg).explanations[0]
    finally:
        srv.httpd.shutdown()
    assert e["description"] == "the word 'dog'" and e["source"] == "llm:m"
    assert e["simulation"]["r"] == pytest.approx(1.0) and e["simulation"]["simulator"] == "llm:m"
    assert e["offline_description"].startswith("fires on ' dog'")
    shown = next(p for p in srv.prompts if "What does the feature detect?" in p)
    assert " dog[10]" in shown  # the activating token is shown with its scaled activation
    assert len(srv.prompts) == 1 + 5  # one explanation + one simulation per scoring text
