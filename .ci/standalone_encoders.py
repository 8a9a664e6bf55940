"""Run inside the venv that holds only sphinx-encoders (and sphinx-core): build every tiny
encoder, encode a synthetic image with it, and build SPHINX's CLIP ViT-L/14 on the meta device,
proving that the declared dependencies are enough."""

import torch
from PIL import Image

from sphinx_mllm.encoders import create_encoder, list_encoders

image = Image.new("RGB", (80, 60), color=(120, 200, 40))
for name in list_encoders("tiny_*"):
    encoder = create_encoder(name)
    tokens = encoder(encoder.transform(image).unsqueeze(0)).tokens
    assert tokens.shape == (1, encoder.num_tokens(), encoder.embed_dim), name
    print(f"  {name}: {tuple(tokens.shape)}")
clip = create_encoder("clip_vit_l14", device="meta")
assert clip(torch.empty(1, 3, 224, 224, device="meta")).tokens.shape == (1, 257, 1024)
print("  clip_vit_l14 on meta: (1, 257, 1024)")
