# A stand-in for a diffusion pipeline that emits one latent frame every 0.2 s, as NPY arrays on stdout:
#   python samples/produce.py | flashdecode decode - -o live.mp4 --model tiny --weights random
import sys, time
import numpy as np
from safetensors.torch import load_file

z = load_file("samples/wan21_t2v_320x512_16lat.safetensors")["latents"][0].float().numpy()  # [C,T,h,w]
for t in range(z.shape[1]):
    np.save(sys.stdout.buffer, z[:, t])
    sys.stdout.buffer.flush()
    time.sleep(0.2)
