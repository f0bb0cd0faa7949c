"""Peak memory of the streamed weight diff vs loading both models.

Workload: the bundled SmolLM2-135M (fp32, 538 MB = 513 MiB of safetensors) against a copy with one
perturbed matrix (``model.layers.12.mlp.down_proj.weight``). Each run is a fresh process;
its peak resident set is what counts: ``VmHWM`` of ``/proc/self/status`` (the high-water
mark of the process's own memory; ``ru_maxrss`` would also count the parent's resident set
at fork time, which Linux carries across ``exec``).

* measured: ``deltalens diff weights BASE COPY`` (norms, effective ranks, logit lens);
* baseline: the usual script — ``AutoModelForCausalLM.from_pretrained`` of both models and
  ``(sd_ft[k] - sd_base[k]).norm()`` over the state dicts.

Targets: the streamed diff's peak RSS < 1.5 × one model's file size, and ≥ 1.3× lower than
the baseline's peak. Also checks that both find exactly the one changed tensor.

    python benchmarks/weight_diff_memory.py
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import report

SRC = str(Path(__file__).resolve().parents[1] / "src")
NAME = "smollm2-135m-instruct"
TENSOR = "model.layers.12.mlp.down_proj.weight"

PEAK = """
def peak_kb():
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
"""

STREAMED = (
    PEAK
    + """
import json, sys, time
sys.path.insert(0, {src!r})
from deltalens.diff import diff_weights
t = time.time()
r = diff_weights({base!r}, {ft!r}, out_dir={out!r}, progress=False)
print(json.dumps({{"peak_kb": peak_kb(), "seconds": time.time() - t,
                  "changed": [x["name"] for x in r["tensors"] if x["fro"] > 0]}}))
"""
)

NAIVE = (
    PEAK
    + """
import json, time, warnings
warnings.simplefilter("ignore")
import torch
from transformers import AutoModelForCausalLM
t = time.time()
a = AutoModelForCausalLM.from_pretrained({base!r}, dtype=torch.float32)
b = AutoModelForCausalLM.from_pretrained({ft!r}, dtype=torch.float32)
sa, sb = a.state_dict(), b.state_dict()
norms = {{k: float((sb[k] - sa[k]).norm()) for k in sa}}
print(json.dumps({{"peak_kb": peak_kb(), "seconds": time.time() - t,
                  "changed": [k for k, v in norms.items() if v > 0 and not k.startswith("lm_head")]}}))
"""
)

IMPORTS = (
    PEAK
    + """
import json, sys
sys.path.insert(0, {src!r})
import torch, deltalens.diff  # the interpreter + torch + deltalens, before any tensor is read
print(json.dumps({{"peak_kb": peak_kb()}}))
"""
)


def child(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    import torch
    from safetensors.torch import load_file, save_file

    from deltalens.models.loading import local_dir

    base = local_dir(NAME)
    size = sum(f.stat().st_size for f in base.glob("*.safetensors"))
    tmp = Path(tempfile.mkdtemp(prefix="deltalens-bench-"))
    try:
        ft = tmp / "ft"
        shutil.copytree(base, ft)
        t = load_file(str(base / "model.safetensors"))
        t[TENSOR] = t[TENSOR] + 0.01 * torch.randn_like(t[TENSOR])
        save_file(t, str(ft / "model.safetensors"), metadata={"format": "pt"})
        (ft / "deltalens.json").unlink(missing_ok=True)
        del t
        imports = child(IMPORTS.format(src=SRC))
        t0 = time.time()
        ours = child(STREAMED.format(src=SRC, base=str(base), ft=str(ft), out=str(tmp / "out")))
        naive = child(NAIVE.format(base=str(base), ft=str(ft)))
        wall = time.time() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    mb = 1024  # MiB
    assert ours["changed"] == [TENSOR], ours["changed"]
    assert naive["changed"] == [TENSOR], naive["changed"]
    peak, base_peak, imp = ours["peak_kb"] * 1024, naive["peak_kb"] * 1024, imports["peak_kb"] * 1024
    print(f"model file size: {size / mb**2:.0f} MiB; interpreter + torch + deltalens: {imp / mb**2:.0f} MiB")
    print(
        f"streamed diff (norms, ranks, logit lens): peak {peak / mb**2:.0f} MiB = {peak / size:.2f}× the model, "
        f"{ours['seconds']:.1f} s; both models loaded: peak {base_peak / mb**2:.0f} MiB = {base_peak / size:.2f}×, "
        f"{naive['seconds']:.1f} s (norms only)  [{wall:.0f} s total]"
    )
    ok = peak < 1.5 * size
    print(f"streamed peak < 1.5 × model size: {'PASS' if ok else 'FAIL'}")
    report(
        "weight diff peak memory: both models loaded / streamed",
        base_peak / peak,
        1.3,
        f"{base_peak / mb**2:.0f} MiB vs {peak / mb**2:.0f} MiB (model {size / mb**2:.0f} MiB)",
    )
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
