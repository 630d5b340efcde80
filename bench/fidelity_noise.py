"""How far a run's GGUFs stray from its merged model, in log-probabilities: where TIE_TOLERANCE comes from.

For an exported run (``export/merged`` and the GGUFs beside it; ``quicktune export RUN --quant q8_0
--no-verify`` adds a q8_0 file quickly), the merged model (transformers, F32) answers up to N held-out
prompts greedily; each GGUF is fed those answers and, at every answer position, both sides' log-softmax
are compared: the reference token's log-probability, and the gap between the merged model's two best
tokens ("margin noise": a token flips where this moves more than the gap). Prints one line per GGUF,
with every top-token flip and the merged model's gap there. Figures: quicktune/export/gate.py.

    .venv/bin/python bench/fidelity_noise.py RUN_DIR [N_PROMPTS]
"""
import sys
from pathlib import Path

import numpy as np

from quicktune import llamacpp
from quicktune.base_model import open_run
from quicktune.data.heldout import load_eval_set
from quicktune.data.tokenizer import stop_token_ids
from quicktune.export.verify import reference_answers


def log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


run_dir = Path(sys.argv[1])
n = int(sys.argv[2]) if len(sys.argv) > 2 else 16
run = open_run(run_dir)
tok = run.chat_tokenizer()
convs = load_eval_set(run.recipe, [], n, train_if_no_eval=True).prompts
prompts = [tok.encode_prompt(c) for c in convs]
stops = stop_token_ids(tok)
merged = run.trained if run.full else run_dir / "export" / "merged"
answers = reference_answers(merged, prompts, stops, 96).answers

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

model = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32).eval()
ref = []
with torch.inference_mode():
    for p, a in zip(prompts, answers):
        logits = model(input_ids=torch.tensor([p + a[:-1]])).logits[0, len(p) - 1 :].numpy()
        ref.append(log_softmax(logits))
del model

print(f"run {run_dir}: {len(prompts)} prompts, {sum(map(len, answers))} answer positions")
ggufs = sorted((run_dir / "export").glob("*.gguf"))
for gguf in ggufs:
    quant = gguf.stem.rsplit("-", 1)[-1]
    llm = llamacpp.load(gguf, n_ctx=max(map(len, prompts)) + 110, logits_all=True)
    token_diff, margin_noise, flips, near = [], [], [], []
    for p, a, lr in zip(prompts, answers, ref):
        llm.reset()
        llm.eval(p + a[:-1])
        lg = log_softmax(np.asarray(llm.scores[len(p) - 1 : len(p) - 1 + len(a)]))
        idx = np.arange(len(a))
        token_diff += list(np.abs(lg[idx, a] - lr[idx, a]))
        top2 = np.argsort(-lr, axis=-1)[:, :2]
        ma = lr[idx, top2[:, 0]] - lr[idx, top2[:, 1]]
        mg = lg[idx, top2[:, 0]] - lg[idx, top2[:, 1]]
        margin_noise += list(np.abs(ma - mg))
        near += list(np.abs(ma - mg)[ma < 1.0])
        gtop = lg.argmax(-1)
        flips.extend(float(lr[i, top2[i, 0]] - lr[i, gtop[i]]) for i in np.flatnonzero(gtop != top2[:, 0]))
    del llm
    td, mn = np.array(token_diff), np.array(margin_noise)
    print(
        f"{quant}: positions {len(td)}; |lp diff| of the reference token: median {np.median(td):.4f} "
        f"p99 {np.quantile(td, .99):.4f} max {td.max():.4f}; top-2 margin noise: median {np.median(mn):.4f} "
        f"p99 {np.quantile(mn, .99):.4f} max {mn.max():.4f}; top-1 flips {len(flips)} at ref margins "
        f"{sorted(round(f, 4) for f in flips)}; where the reference's top-2 are within 1 nat: {len(near)} positions, "
        f"margin noise max {max(near, default=0):.4f}"
    )
