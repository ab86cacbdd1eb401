#!/usr/bin/python3
"""Export the vision tower of a Hugging Face layout CLIP checkpoint to ONNX.

usage: /usr/bin/python3 bench/ort/export_vit.py MODEL_DIR OUT.onnx

MODEL_DIR is a model.safetensors + config.json directory, e.g. the random
ViT-B/32 that `build/bench/embed --keep DIR --geometry vit-b32` writes to
DIR/vit-b32, so ONNX Runtime and vlmdb run the same weights.  Debian's
python3-torch (1.13) is enough: the tower is written here with plain
torch.nn modules (CLIP's pre-LN ViT: patch conv, class token, positions,
pre layer norm, L blocks with quick_gelu, post layer norm of the class
token, visual projection), the safetensors file is read with numpy, and
torch.onnx.export (opset 14) needs no onnx package.  Input "pixels"
[batch, 3, S, S] float32 (batch is dynamic), output "embedding"
[batch, D] (the projection, not normalized).
"""
import json
import struct
import sys

import numpy as np
import torch
from torch import nn


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    types = {"F32": np.float32, "F16": np.float16, "BF16": None}
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        if t["dtype"] == "BF16":
            raw = np.frombuffer(data[a:b], dtype=np.uint16).astype(np.uint32) << 16
            arr = raw.view(np.float32)
        else:
            arr = np.frombuffer(data[a:b], dtype=types[t["dtype"]]).astype(np.float32)
        out[name] = torch.from_numpy(arr.reshape(t["shape"]).copy())
    return out


class Block(nn.Module):
    def __init__(self, C, F, H):
        super().__init__()
        self.H = H
        self.ln1 = nn.LayerNorm(C, eps=1e-5)
        self.q = nn.Linear(C, C)
        self.k = nn.Linear(C, C)
        self.v = nn.Linear(C, C)
        self.o = nn.Linear(C, C)
        self.ln2 = nn.LayerNorm(C, eps=1e-5)
        self.fc1 = nn.Linear(C, F)
        self.fc2 = nn.Linear(F, C)

    def forward(self, x):
        B, T, C = x.shape
        h = self.ln1(x)
        hd = C // self.H

        def heads(t):
            return t.reshape(B, T, self.H, hd).transpose(1, 2)

        q, k, v = heads(self.q(h)), heads(self.k(h)), heads(self.v(h))
        a = torch.softmax(q @ k.transpose(-1, -2) * hd ** -0.5, dim=-1) @ v
        x = x + self.o(a.transpose(1, 2).reshape(B, T, C))
        m = self.fc1(self.ln2(x))
        m = m * torch.sigmoid(1.702 * m)  # quick_gelu
        return x + self.fc2(m)


class Vision(nn.Module):
    def __init__(self, cfg, D):
        super().__init__()
        C, P, S = cfg["hidden_size"], cfg["patch_size"], cfg["image_size"]
        self.patch = nn.Conv2d(3, C, P, P, bias=False)
        self.cls = nn.Parameter(torch.zeros(C))
        self.pos = nn.Parameter(torch.zeros((S // P) ** 2 + 1, C))
        self.pre = nn.LayerNorm(C, eps=1e-5)
        self.blocks = nn.ModuleList(
            Block(C, cfg["intermediate_size"], cfg["num_attention_heads"])
            for _ in range(cfg["num_hidden_layers"]))
        self.post = nn.LayerNorm(C, eps=1e-5)
        self.proj = nn.Linear(C, D, bias=False)

    def forward(self, pixels):
        x = self.patch(pixels).flatten(2).transpose(1, 2)
        cls = self.cls.expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos
        x = self.pre(x)
        for b in self.blocks:
            x = b(x)
        return self.proj(self.post(x[:, 0]))


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    d, out = sys.argv[1], sys.argv[2]
    cfg = json.load(open(d + "/config.json"))
    vc, D = cfg["vision_config"], cfg["projection_dim"]
    w = read_safetensors(d + "/model.safetensors")
    m = Vision(vc, D).eval()
    p = "vision_model."
    sd = {"patch.weight": w[p + "embeddings.patch_embedding.weight"],
          "cls": w[p + "embeddings.class_embedding"],
          "pos": w[p + "embeddings.position_embedding.weight"],
          "pre.weight": w[p + "pre_layrnorm.weight"],
          "pre.bias": w[p + "pre_layrnorm.bias"],
          "post.weight": w[p + "post_layernorm.weight"],
          "post.bias": w[p + "post_layernorm.bias"],
          "proj.weight": w["visual_projection.weight"]}
    names = {"ln1": "layer_norm1", "q": "self_attn.q_proj",
             "k": "self_attn.k_proj", "v": "self_attn.v_proj",
             "o": "self_attn.out_proj", "ln2": "layer_norm2",
             "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
    for i in range(vc["num_hidden_layers"]):
        for ours, hf in names.items():
            for kind in ("weight", "bias"):
                sd[f"blocks.{i}.{ours}.{kind}"] = \
                    w[f"{p}encoder.layers.{i}.{hf}.{kind}"]
    m.load_state_dict(sd)
    S = vc["image_size"]
    x = torch.zeros(1, 3, S, S)
    torch.onnx.export(m, x, out, opset_version=14, input_names=["pixels"],
                      output_names=["embedding"],
                      dynamic_axes={"pixels": {0: "batch"},
                                    "embedding": {0: "batch"}})
    # pixels for the timing script and a check against vlmdb
    g = torch.Generator().manual_seed(20)
    px = torch.rand(16, 3, S, S, generator=g) * 3 - 1.5
    with torch.no_grad():
        ref = m(px)
    np.asarray(px, dtype=np.float32).tofile(out + ".pixels.f32")
    np.asarray(ref, dtype=np.float32).tofile(out + ".embedding.f32")
    print(f"wrote {out} (ViT {vc['hidden_size']}x{vc['num_hidden_layers']}, "
          f"{S} px, patch {vc['patch_size']}, D {D}, opset 14)")


if __name__ == "__main__":
    main()
