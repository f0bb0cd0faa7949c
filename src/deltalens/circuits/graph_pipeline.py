"""The ``deltalens circuit transcoders`` and ``deltalens circuit graph`` stages.

**Transcoders** (:class:`TranscodersConfig` → :func:`train_transcoders` → :class:`TranscoderSet`):
one MLP transcoder per layer (input = the MLP's input after its norm, target = ``mlp_out``,
optional linear skip connection), trained with the SAE trainer on token windows of a text
corpus and saved in SAELens format::

    <dir>/layer_<i>/cfg.json, sae_weights.safetensors, sparsity.safetensors
    <dir>/transcoders.json   config, per-layer normalised MSE (held-out rows), L0, seconds

Activations are collected ``layers_per_pass`` layers per forward sweep over the windows (memory
``≈ 2 · n_tokens · d_model · 4 B`` per layer). The set file is rewritten after every layer, so a
killed run resumes at the first layer not yet saved; a resume under another config is refused.
**Normalised MSE** on the held-out fraction ``val_fraction`` of the rows:
``nMSE = Σ‖y − ŷ‖² / Σ‖y − ȳ‖²`` (fraction of variance of ``mlp_out`` unexplained).

**Graph** (:class:`GraphConfig` → :func:`run_graph` → :class:`GraphRun`): the attribution graph
of one prompt (:func:`deltalens.circuits.attribution_graph.attribution_graph`) pruned by
cumulative influence, written as::

    graph.json          circuit-tracer's frontend format (validated against its schema)
    circuit.json, edges.parquet, circuit.svg, circuit.html    the pruned graph as a Circuit
    graph_summary.json  scores, top path, timings
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..errors import ConfigError, DataFormatError
from ..io import provenance, write_json
from ..stage import StageConfig, StageResult, at_least, in_range, option, register_result
from .graph import Circuit

LAYER_DIR = "layer_{}"
GRAPH_FILE = "graph.json"
SUMMARY_FILE = "graph_summary.json"


# ---- transcoders ----------------------------------------------------------------------------
SKIP_FITS = ("jacobian", "lstsq")


@dataclass
class TranscodersConfig(StageConfig):
    """Options of ``deltalens circuit transcoders``."""

    model: str = option("smollm2-135m-instruct", flag="--model", short="-m", help="Model spec.")
    data: str | None = option(
        None,
        flag="--data",
        short="-d",
        help="Text corpus (.txt/.jsonl/.parquet file, directory or hf:NAME); default: the bundled "
        "Python tutorial + unrelated text + the capitals prompts.",
    )
    layers: str = option("all", flag="--layers", short="-l", help="Layers ('all', '0,5', '0-3').")
    tokens: int = option(32768, flag="--tokens", help="Token rows collected per layer.")
    context_len: int = option(64, flag="--context-len", help="Tokens per window.")
    expansion: int = option(2, flag="--expansion", help="d_sae = expansion × d_model.")
    k: int = option(32, flag="--k", help="Active features per token (TopK).")
    epochs: float = option(2.0, flag="--epochs", help="Training passes over the collected rows.")
    batch_size: int = option(256, flag="--batch-size", help="Rows per training step.")
    skip: bool = option(True, flag="--skip/--no-skip", help="Linear skip connection (least squares).")
    skip_fit: str = option(
        "jacobian",
        flag="--skip-fit",
        help="How the skip is fitted: jacobian (the MLP's mean Jacobian over the rows) or lstsq "
        "(least squares; more variance explained, larger gains).",
    )
    skip_ridge: float = option(
        1e-4,
        flag="--skip-ridge",
        help="Ridge of the lstsq skip fit, × tr(XᵀX)/d (larger: smaller skip gains).",
    )
    skip_rows: int = option(256, flag="--skip-rows", help="Rows whose Jacobians the jacobian skip averages.")
    val_fraction: float = option(0.1, flag="--val-fraction", help="Held-out rows for the normalised MSE.")
    layers_per_pass: int = option(10, flag="--layers-per-pass", help="Layers collected per forward sweep.")
    seed: int = option(0, flag="--seed", help="Random seed.")
    dtype: str = option("auto", flag="--dtype", help="Model dtype.")
    device: str | None = option(None, flag="--device", help="Model device.")
    drop_first: bool = option(
        True,
        flag="--drop-first/--keep-first",
        help="Leave each window's first token (the attention sink, held constant in graphs) "
        "out of the training rows.",
    )

    #: fields that do not change the trained transcoders
    RESUME_EXEMPT: ClassVar[tuple[str, ...]] = ("layers", "layers_per_pass", "device")

    def validate(self) -> None:
        for name in ("tokens", "context_len", "expansion", "k", "batch_size", "layers_per_pass"):
            at_least(self, name, 1)
        at_least(self, "context_len", 2)
        if not self.epochs > 0:
            raise ConfigError(f"--epochs must be > 0, got {self.epochs}")
        in_range(self, "val_fraction", 0, 1, hi_open=True)
        at_least(self, "skip_ridge", 0)
        at_least(self, "skip_rows", 1)
        if self.skip_fit not in SKIP_FITS:
            raise ConfigError(f"--skip-fit must be one of {', '.join(SKIP_FITS)}, got {self.skip_fit!r}")


@register_result
@dataclass
class TranscoderSet(StageResult):
    """A directory of per-layer transcoders and their training metrics (module docstring)."""

    KIND: ClassVar[str] = "circuits.transcoders"
    FILENAME: ClassVar[str] = "transcoders.json"

    model: str
    n_layers: int
    config: dict[str, Any]
    layers: dict[str, dict[str, float]] = field(default_factory=dict)  # "i" -> metrics
    meta: dict[str, Any] = field(default_factory=dict)

    def complete(self) -> bool:
        return all(str(i) in self.layers for i in range(self.n_layers))

    def load_transcoders(self, directory: str | Path, device: Any = "cpu") -> dict[int, Any]:
        from ..sae.transcoder import load_transcoder

        missing = [i for i in range(self.n_layers) if str(i) not in self.layers]
        if missing:
            raise DataFormatError(
                f"{directory}: transcoders for layers {missing} are missing "
                "(finish them with deltalens circuit transcoders)"
            )
        return {
            i: load_transcoder(Path(directory) / LAYER_DIR.format(i), device=device)
            for i in range(self.n_layers)
        }

    def summary(self) -> dict[str, Any]:
        nm = [v["nmse"] for v in self.layers.values()]
        return {
            "model": self.model,
            "layers": f"{len(self.layers)}/{self.n_layers}",
            "d_sae": self.meta.get("d_sae"),
            "nmse": {"mean": sum(nm) / len(nm), "max": max(nm)} if nm else None,
            "l0": {k: round(v["l0"], 1) for k, v in list(self.layers.items())[:8]},
        }


def _default_texts() -> list[str]:
    from ..data import bundled_path
    from ..data.corpus import read_texts
    from ..data.jsonl import read_jsonl

    texts = list(read_texts(bundled_path("sae", "python_tutorial.txt")))
    texts += list(read_texts(bundled_path("organisms", "unrelated_text.txt")))
    for r in read_jsonl(bundled_path("circuits", "capitals.jsonl")):
        texts += [f"{r['clean']}{r['clean_answer']}.", f"{r['corrupted']}{r['corrupted_answer']}."]
    return texts


def train_transcoders(
    config: TranscodersConfig, out: str | Path, progress: bool = True
) -> tuple[TranscoderSet, dict[int, Any]]:
    """Train (or resume) one transcoder per layer of ``config.layers`` into ``out``."""
    from tqdm.auto import tqdm

    from ..data.corpus import read_texts, token_windows
    from ..models import load
    from ..sae.train import SAETrainConfig
    from ..sae.transcoder import (
        load_transcoder,
        mean_jacobian,
        train_transcoder,
        transcoder_nmse,
        transcoder_pairs,
    )
    from .pipeline import layer_list

    cfg = config
    out = Path(out)
    lm = load(cfg.model, dtype=cfg.dtype, device=cfg.device)
    layers = layer_list(cfg.layers, lm.n_layers)
    header = out / TranscoderSet.FILENAME
    if header.exists():
        tset = TranscoderSet.load(out)
        if tset.model != lm.name:
            raise ConfigError(f"{out} holds transcoders of {tset.model}, not {lm.name}; use another --out")
        cfg.check_resume(tset.config, out, exclude=TranscodersConfig.RESUME_EXEMPT)
    else:
        tset = TranscoderSet(model=lm.name, n_layers=lm.n_layers, config=cfg.to_dict())
    todo = [layer for layer in layers if str(layer) not in tset.layers]
    trained: dict[int, Any] = {}
    if todo:
        texts = read_texts(cfg.data) if cfg.data else _default_texts()
        windows = list(token_windows(lm.tokenizer, texts, cfg.context_len, max_tokens=cfg.tokens))
        if not windows:
            raise DataFormatError(f"{cfg.data or 'the bundled corpus'}: no text to cut into windows")
        n_tokens = sum(len(w["prompt_ids"]) for w in windows)
        d_sae = cfg.expansion * lm.d_model
        tcfg = SAETrainConfig(
            architecture="topk",
            d_sae=d_sae,
            k=cfg.k,
            total_tokens=max(cfg.batch_size, int(cfg.epochs * n_tokens * (1 - cfg.val_fraction))),
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            log_every=10_000,
        )
        tset.meta.update({"d_sae": d_sae, "n_tokens": n_tokens, "windows": len(windows)})
        bar = tqdm(total=len(todo), desc="transcoders", unit="layer", disable=not progress)
        for start in range(0, len(todo), cfg.layers_per_pass):
            chunk = todo[start : start + cfg.layers_per_pass]
            t0 = time.perf_counter()
            pairs = transcoder_pairs(lm, windows, chunk, drop_first=cfg.drop_first)
            t_collect = (time.perf_counter() - t0) / len(chunk)
            for layer in chunk:
                x, y = pairs.pop(layer)
                g = torch.Generator().manual_seed(cfg.seed + layer)
                perm = torch.randperm(len(x), generator=g)
                n_val = int(len(x) * cfg.val_fraction)
                val, tr = perm[:n_val], perm[n_val:]
                t1 = time.perf_counter()
                w_skip = None
                if cfg.skip and cfg.skip_fit == "jacobian":
                    w_skip = mean_jacobian(lm.arch.mlp(layer), x[tr], cfg.skip_rows, seed=cfg.seed + layer)
                tc = train_transcoder(
                    x[tr],
                    y[tr],
                    layer,
                    tcfg,
                    out=out / LAYER_DIR.format(layer),
                    skip=cfg.skip,
                    model_name=lm.name,
                    skip_ridge=cfg.skip_ridge,
                    w_skip=w_skip,
                )
                xv, yv = (x[val], y[val]) if n_val else (x[tr], y[tr])
                with torch.no_grad():
                    l0 = float((tc.encode(xv.to(tc.dtype)) > 0).float().sum(-1).mean())
                tset.layers[str(layer)] = {
                    "nmse": transcoder_nmse(tc, xv, yv),
                    "l0": l0,
                    "seconds": time.perf_counter() - t1 + t_collect,
                }
                tset.layers = dict(sorted(tset.layers.items(), key=lambda kv: int(kv[0])))
                tset.save(out)  # after every layer: a kill loses at most the layer in flight
                trained[layer] = tc
                bar.update(1)
                del x, y
        bar.close()
    tset.meta["provenance"] = provenance(lm, method="transcoders", config=cfg.to_dict())
    tset.save(out)
    for layer in layers:
        if layer not in trained:
            trained[layer] = load_transcoder(out / LAYER_DIR.format(layer))
    return tset, trained


# ---- graph ----------------------------------------------------------------------------------
@dataclass
class GraphConfig(StageConfig):
    """Options of ``deltalens circuit graph``."""

    transcoders: Path = option(
        Path("transcoders"),
        flag="--transcoders",
        short="-t",
        help="Transcoder directory (circuit transcoders).",
    )
    prompt: str | None = option(
        None, flag="--prompt", help="The prompt (default: the clean prompt of --pair)."
    )
    pairs: str = option("capitals", flag="--pairs", short="-p", help="Pairs file or bundled set for --pair.")
    pair: int = option(0, flag="--pair", help="Use this pair's clean prompt (and answer as the target).")
    target: str | None = option(
        None,
        flag="--target",
        help="Comma list of target tokens (strings or ids); default: the pair's answer, or the "
        "most likely next tokens for --prompt.",
    )
    contrast: bool = option(
        True,
        flag="--contrast/--no-contrast",
        help="With --pair: target the clean − corrupted answer logit difference (the pair's "
        "metric) instead of the clean answer's logit.",
    )
    model: str = option("smollm2-135m-instruct", flag="--model", short="-m", help="Model spec.")
    max_feature_nodes: int = option(256, flag="--max-feature-nodes", help="Feature rows to compute.")
    batch_size: int = option(32, flag="--batch-size", help="Targets per backward pass.")
    max_logits: int = option(5, flag="--max-logits", help="Most likely tokens as logit nodes.")
    logit_probability: float = option(
        0.95, flag="--logit-probability", help="Cumulative probability of them."
    )
    node_threshold: float = option(0.8, flag="--node-threshold", help="Cumulative node influence kept.")
    edge_threshold: float = option(0.98, flag="--edge-threshold", help="Cumulative edge influence kept.")
    out: Path | None = option(None, flag="--out", short="-o", help="Output directory.")
    dtype: str = option("float32", flag="--dtype", help="Model dtype.")
    device: str | None = option(None, flag="--device", help="Model device.")
    constant_first: bool = option(
        True,
        flag="--constant-first/--no-constant-first",
        help="Hold the first position (the attention sink) constant: no feature or error nodes "
        "there, as circuit-tracer does with BOS.",
    )

    routes: bool = option(
        True,
        flag="--routes/--no-routes",
        help="Find which attention layers carry the top paths' last edge into the logit (one "
        "backward pass per layer and path).",
    )

    def validate(self) -> None:
        for name in ("max_feature_nodes", "batch_size", "max_logits"):
            at_least(self, name, 1)
        at_least(self, "pair", 0)
        for name in ("logit_probability", "node_threshold", "edge_threshold"):
            in_range(self, name, 0, 1)


@dataclass
class GraphRun:
    circuit: Circuit
    out_dir: Path
    summary: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)


def _target_ids(lm: Any, spec: str) -> list[int]:
    ids = []
    for part in spec.split(","):
        if part.strip().lstrip("-").isdigit():
            ids.append(int(part))
            continue
        toks = lm.tokenizer(part, add_special_tokens=False)["input_ids"]
        if not toks:
            raise ConfigError(f"--target {part!r} encodes to no token")
        ids.append(int(toks[0]))
    return ids


PATH_KEYS = ("id", "type", "layer", "position", "token", "index")


def run_graph(config: GraphConfig, experiment: Any = "default") -> GraphRun:
    """Load the model and the transcoders, build the graph of the prompt, write its files."""
    from ..models import load
    from .attribution_graph import attribution_graph, graph_circuit, node_table
    from .figure import save_figure
    from .graph_json import graph_json, save_graph_json

    cfg = config
    tdir = Path(cfg.transcoders)
    if not (tdir / TranscoderSet.FILENAME).is_file():
        raise DataFormatError(f"{tdir}: no transcoders here (train them with deltalens circuit transcoders)")
    tset = TranscoderSet.load(tdir)
    lm = load(cfg.model, dtype=cfg.dtype, device=cfg.device)
    if tset.model != lm.name:
        raise ConfigError(f"{tdir} holds transcoders of {tset.model}, not of {lm.name}")
    tcs = tset.load_transcoders(tdir, device=lm.device)
    target: list[int] | None = _target_ids(lm, cfg.target) if cfg.target else None
    contrast: list[int] | None = None
    if cfg.prompt is not None:
        prompt, name = cfg.prompt, "prompt"
        if not prompt.strip():
            raise ConfigError("--prompt is empty")
    else:
        from ..data.pairs import load_pairs

        records = load_pairs(cfg.pairs)
        if cfg.pair >= len(records):
            raise ConfigError(f"--pair {cfg.pair}: {cfg.pairs} has {len(records)} pairs")
        from .task import _answer_ids, _encode_prompt

        r = records[cfg.pair]
        prompt, name = _encode_prompt(lm, r, r.clean, chat=False)[0], f"{Path(cfg.pairs).stem}_{cfg.pair}"
        if target is None:
            target = _answer_ids(lm, r.clean_answer, r, "clean answer", single=False)[:1]
            if cfg.contrast:
                contrast = _answer_ids(lm, r.corrupted_answer, r, "corrupted answer", single=False)[:1]
    if cfg.out is not None:
        out_dir = Path(cfg.out)
    else:
        from ..experiment import Experiment

        exp = experiment if isinstance(experiment, Experiment) else Experiment.named(str(experiment))
        out_dir = exp.circuits_dir(name, "graph")
    graph = attribution_graph(
        lm,
        prompt,
        tcs,
        max_feature_nodes=cfg.max_feature_nodes,
        batch_size=cfg.batch_size,
        max_logits=cfg.max_logits,
        logit_probability=cfg.logit_probability,
        target_tokens=target,
        contrast_tokens=contrast,
        constant_first=cfg.constant_first,
    )
    circuit = graph_circuit(graph, cfg.node_threshold, cfg.edge_threshold)
    circuit.meta["provenance"] = provenance(lm, method="attribution_graph", config=cfg.to_dict())
    doc = graph_json(
        graph,
        slug=name,
        scan=f"deltalens-{lm.name}",
        transcoder_list=[str(tdir / LAYER_DIR.format(i)) for i in range(lm.n_layers)],
        node_threshold=cfg.node_threshold,
        edge_threshold=cfg.edge_threshold,
    )
    files = {"graph": save_graph_json(doc, out_dir / GRAPH_FILE), "circuit": circuit.save(out_dir)}
    files["edges"] = out_dir / Circuit.EDGES_FILE
    files.update(save_figure(circuit, out_dir))
    path, share = graph.top_path()
    fpath, fshare = graph.top_feature_path()
    node_ids, table = node_table(graph)
    nm = [v["nmse"] for v in tset.layers.values()]
    summary = {
        "prompt": graph.prompt,
        "tokens": graph.tokens,
        "logit_tokens": graph.logit_tokens,
        "logit_probs": [float(p) for p in graph.logit_probs],
        "active_features": graph.n_active,
        "feature_rows": graph.n_features,
        "scores": graph.scores(),
        "nodes": len(circuit.nodes),
        "edges": len(circuit.edges),
        "top_path": [{k: table[i].get(k) for k in PATH_KEYS} for i in path],
        "top_path_share": share,
        "top_feature_path": [{k: table[i].get(k) for k in PATH_KEYS} for i in fpath],
        "top_feature_path_share": fshare,
        "seconds": graph.seconds,
        "transcoder_nmse_mean": sum(nm) / len(nm),
    }
    if cfg.routes:
        summary["attention_routes"] = _routes(
            lm, graph, tcs, [path, fpath], node_ids, contrast, cfg.constant_first
        )
    files["summary"] = write_json(out_dir / SUMMARY_FILE, summary)
    return GraphRun(circuit, out_dir, summary, files)


def _routes(
    lm: Any,
    graph: Any,
    tcs: dict[int, Any],
    paths: list[list[int]],
    ids: list[str],
    contrast: list[int] | None,
    cf: bool,
) -> list[dict[str, Any]]:
    """For each path whose last edge into the logit crosses positions: the attention layers
    that carry it (:func:`~.attribution_graph.attention_routes`), largest share first; ``ids``
    are the graph's node ids (:func:`~.attribution_graph.node_table`)."""
    from .attribution_graph import attention_routes

    f_sl, _, tok, _ = graph.slices()
    V = lm.vocab_size
    direction = torch.zeros(V)
    direction[graph.logit_ids[0]] = 1.0
    if contrast:
        direction[int(contrast[0])] -= 1.0
    else:
        direction -= 1.0 / V
    out, seen = [], set()
    for path in paths:
        if len(path) < 2 or path[-2] in seen:
            continue
        src = path[-2]
        seen.add(src)
        if src < f_sl.stop:
            layer, pos, idx = (int(v) for v in graph.features[src])
            source: tuple[Any, ...] = ("feature", layer, pos, idx)
        elif tok.start <= src < tok.stop:
            pos = src - tok.start
            source = ("token", pos)
        else:
            continue
        if pos == graph.n_pos - 1:
            continue  # no position to cross
        drops = attention_routes(lm, graph.token_ids, tcs, source, direction, constant_first=cf)
        edge = float(graph.adjacency[graph.slices()[3].start, src])
        order = sorted(range(len(drops)), key=lambda i: -abs(drops[i]))
        out.append(
            {
                "source": ids[src],
                "edge": edge,
                "drops": drops,
                "top_layers": [
                    {"layer": i, "drop": drops[i], "share": drops[i] / edge if edge else None}
                    for i in order[:5]
                ],
            }
        )
    return out
