"""How a run executes: the one batch loop, devices, torchrun distribution, interrupts, resume, precision."""
