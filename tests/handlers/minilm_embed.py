"""Handler fixture: the real all-MiniLM-L6-v2 sentence embedding (384 floats, unit norm) in numpy alone,
as sentence-transformers computes it: BERT forward pass, mean pooling over the mask, L2 normalisation.
Model dir: EMBER_MODEL_PATH, else input `model_dir`, else snapshot_download(MINILM_REPO), else the volume."""

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

if os.environ.get("EMBER_TEST_SDK") == "runpod":
    import runpod.serverless as sls
else:
    import ember.serverless as sls

REPO = os.environ.get("MINILM_REPO", "sentence-transformers/all-MiniLM-L6-v2")
VOLUME = os.environ.get("RUNPOD_VOLUME_PATH", "/runpod-volume")
MAX_TOKENS = 256  # sentence_bert_config.json: max_seq_length


def erf(x):
    """Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7): BERT's GELU is the exact, erf-based one."""
    s = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return s * (1.0 - poly * np.exp(-a * a))


def gelu(x):
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


class MiniLM:
    """The BERT encoder of a sentence-transformers model directory, with mean pooling and normalisation."""

    def __init__(self, model_dir):
        self.dir = Path(model_dir)
        cfg = json.loads((self.dir / "config.json").read_text())
        self.heads, self.layers = cfg["num_attention_heads"], cfg["num_hidden_layers"]
        self.eps = cfg.get("layer_norm_eps", 1e-12)
        self.w = load_file(str(self.dir / "model.safetensors"))
        self.tok = Tokenizer.from_file(str(self.dir / "tokenizer.json"))
        self.tok.enable_truncation(MAX_TOKENS)
        self.tok.enable_padding(pad_id=0, pad_token="[PAD]")  # pad to the longest in the batch

    def p(self, name):
        return self.w[name]

    def dense(self, x, name):
        return x @ self.p(name + ".weight").T + self.p(name + ".bias")

    def forward(self, ids, mask):
        n, length = ids.shape
        x = (
            self.p("embeddings.word_embeddings.weight")[ids]
            + self.p("embeddings.position_embeddings.weight")[np.arange(length)][None]
            + self.p("embeddings.token_type_embeddings.weight")[0]
        )
        x = layer_norm(
            x, self.p("embeddings.LayerNorm.weight"), self.p("embeddings.LayerNorm.bias"), self.eps
        )
        bias = np.where(mask[:, None, None, :] > 0, 0.0, -1e9).astype(np.float32)
        hd = x.shape[-1] // self.heads
        for i in range(self.layers):
            pre = f"encoder.layer.{i}."

            def split(t):
                return t.reshape(n, length, self.heads, hd).transpose(0, 2, 1, 3)

            q = split(self.dense(x, pre + "attention.self.query"))
            k = split(self.dense(x, pre + "attention.self.key"))
            v = split(self.dense(x, pre + "attention.self.value"))
            scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd) + bias
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            probs = scores / scores.sum(-1, keepdims=True)
            ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(n, length, -1)
            att = self.dense(ctx, pre + "attention.output.dense")
            x = layer_norm(
                x + att,
                self.p(pre + "attention.output.LayerNorm.weight"),
                self.p(pre + "attention.output.LayerNorm.bias"),
                self.eps,
            )
            ff = self.dense(gelu(self.dense(x, pre + "intermediate.dense")), pre + "output.dense")
            x = layer_norm(
                x + ff,
                self.p(pre + "output.LayerNorm.weight"),
                self.p(pre + "output.LayerNorm.bias"),
                self.eps,
            )
        return x

    def embed(self, sentences):
        enc = self.tok.encode_batch(list(sentences))
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.float32)
        hidden = self.forward(ids, mask)
        pooled = (hidden * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


def find_model_dir(job_input=None):
    if os.environ.get("EMBER_MODEL_PATH"):
        return os.environ["EMBER_MODEL_PATH"]
    # A directory named in the job or fixed at deploy time (a baked image); a relative one is on the volume.
    given = (job_input or {}).get("model_dir") or os.environ.get("MINILM_MODEL_DIR")
    if given:
        return str(given if Path(given).is_absolute() else Path(VOLUME) / given)
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(REPO)  # HF_ENDPOINT / HF_HUB_CACHE / offline mode from the environment
    except Exception as exc:  # no hub client, no network, not cached: fall back to the volume
        print(f"minilm: snapshot_download({REPO}) failed: {exc}", file=sys.stderr)
    return str(Path(VOLUME) / REPO.split("/")[-1])


_started = time.monotonic()
MODEL = None
if os.environ.get("EMBER_MODEL_PATH") or os.environ.get("MINILM_LOAD_AT_START", "1") == "1":
    MODEL = MiniLM(find_model_dir())  # cold-start cost belongs to start-up, not to the first job
LOAD_S = time.monotonic() - _started


def handler(job):
    global MODEL
    inp = job["input"] or {}
    wanted = find_model_dir(inp) if MODEL is None or inp.get("model_dir") else str(MODEL.dir)
    if MODEL is None or Path(wanted) != MODEL.dir:
        MODEL = MiniLM(wanted)
    text = inp.get("sentences", inp.get("sentence", ""))
    vectors = MODEL.embed([text] if isinstance(text, str) else text)
    out = {"model_dir": str(MODEL.dir), "load_s": round(LOAD_S, 3)}
    if isinstance(text, str):
        return {**out, "embedding": vectors[0].tolist()}
    return {**out, "embeddings": [v.tolist() for v in vectors]}


if __name__ == "__main__":
    sls.start({"handler": handler})
