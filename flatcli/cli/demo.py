"""``flatrob demo``: every command on the bundled example, no arguments."""

from __future__ import annotations

import sys

from typing import Annotated

import typer

from flatcli.cli.app import app

EXAMPLE = "example:digits-cnn"


def section(title: str) -> None:
    print(f"\n$ {title}", flush=True)


@app.command()
def demo(device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "cpu") -> None:
    """Run each analysis on the bundled digits CNN (example:digits-cnn) and print the results."""
    from flatcli.cli.attack import attack
    from flatcli.cli.bound import bound
    from flatcli.cli.detect import detect
    from flatcli.cli.inspect import inspect
    from flatcli.cli.sharpness import sharpness
    from flatcli.cli.sweep import sweep_scale

    section(f"flatrob inspect {EXAMPLE}")
    inspect(checkpoint=EXAMPLE)
    section(f"flatrob sharpness {EXAMPLE} --hutchinson 20")
    sharpness(checkpoint=[EXAMPLE], device=device, hutchinson=20, quiet=True)
    sys.stdout.flush()

    section(f"flatrob attack {EXAMPLE} --norm linf --eps 0.3 --alpha 0.03 --steps 20   # the uncanny valley (Fig. 3)")
    attack(checkpoint=[EXAMPLE], device=device, norm="linf", eps=0.3, alpha=0.03, steps=20, quiet=True)
    sys.stdout.flush()

    numbers = "--kappa 0.8 --lipschitz 12 --r 3.1 --classes 10 --features 512"
    section(f"flatrob bound {numbers} --epsilon 0.01,0.1,1   # Prop. 8/9 from numbers")
    bound(kappa="0.8", lipschitz="12", r="3.1", classes="10", features="512", epsilon="0.01,0.1,1")
    section(f"flatrob bound {EXAMPLE} --epsilon 0.1 --limit 32 --local-iters 20 --check   # measured, then attacked")
    bound(checkpoint=[EXAMPLE], epsilon="0.1", limit=32, local_iters=20, check=True, device=device, quiet=True)
    sys.stdout.flush()

    section(f"flatrob detect {EXAMPLE} --eps 0.3 --alpha 0.03 --steps 20 --method components   # D.4: flag adversarials")
    detect(checkpoint=[EXAMPLE], device=device, norm="linf", eps=0.3, alpha=0.03, steps=20, method="components", quiet=True)
    sys.stdout.flush()

    flags = "--scales 1,10,100 --limit 60 --eps 1 --alpha 0.1 --steps 10 --attack-eps 0.1 --attack-alpha 0.025"
    section(f"flatrob sweep-scale {EXAMPLE} {flags}   # §6.1 basins, D.3 gradient masking")
    sweep_scale(checkpoint=[EXAMPLE], scales="1,10,100", limit=60, eps=1.0, alpha=0.1, steps=10, attack_eps=0.1, attack_alpha=0.025,
                device=device, quiet=True)
    sys.stdout.flush()
