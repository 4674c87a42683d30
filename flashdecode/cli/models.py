"""`flashdecode models`: variants, parameter counts, latent spaces, and which weights are present."""
from __future__ import annotations

from . import app


@app.command()
def models() -> None:
    """List the model variants, their parameter counts, latent spaces, and the weights found."""
    from rich.console import Console
    from rich.table import Table

    from ..checkpoint import find_weights
    from ..latent_spaces import LATENT_SPACES
    from ..model import VARIANTS, ModelConfig, count_parameters

    spaces = ", ".join(f"{s.name} ({s.description})" for s in LATENT_SPACES.values())
    table = Table(title="flashdecode variants", caption=f"latent spaces: {spaces}")
    for col in ("variant", "depth", "width", "heads", "kv heads", "params (wan2.2 / wan2.1)", "weights found"):
        table.add_column(col)
    for name, (depth, dim, heads, kv) in VARIANTS.items():
        found = [f"{space}: {p}" for space in LATENT_SPACES if (p := find_weights(name, space))]
        params = [count_parameters(ModelConfig.build(name, space)) / 1e6 for space in ("wan2.2", "wan2.1")]
        table.add_row(name, str(depth), str(dim), str(heads), str(kv), " / ".join(f"{p:.2f} M" for p in params),
                      "\n".join(found) or "-")
    Console().print(table)
    Console().print("Other decoder families, with --model NAME --weights PATH (nothing is downloaded): wan2.1-vae, "
                    "wan2.2-vae: the stock Wan VAE decoder, streamed (your diffusers AutoencoderKLWan folder or Wan VAE "
                    "file); taew2.1, taew2.2: tiny TAEHV decoders for previews (a taew2_1/taew2_2 file of "
                    "madebyollin/taehv).", highlight=False)
