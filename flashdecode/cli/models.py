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

    table = Table(title="flashdecode variants")
    for col in ("variant", "depth", "width", "heads", "kv heads", "params (wan2.2)", "weights found"):
        table.add_column(col)
    for name, (depth, dim, heads, kv) in VARIANTS.items():
        found = [f"{space}: {p.name}" for space in LATENT_SPACES if (p := find_weights(name, space))]
        params = count_parameters(ModelConfig.build(name, "wan2.2"))
        table.add_row(name, str(depth), str(dim), str(heads), str(kv), f"{params / 1e6:.2f} M", "\n".join(found) or "-")
    Console().print(table)
